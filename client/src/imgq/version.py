"""The installed distribution's version, and the User-Agent that names it."""

from __future__ import annotations

import importlib.metadata

DISTRIBUTION = "imgq"


def version() -> str:
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "unknown (imgq is not installed)"


USER_AGENT = f"imgq-client/{version().split(' ', 1)[0]}"
