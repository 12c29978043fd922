"""The spans the services write with IMGQ_TRACING=file:PATH, read back, and the client trace
the tests start a job in (all of the job's spans must join it)."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

# A client's own trace: the job's spans must all join it.
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"


def read_spans(path: Path) -> list[dict[str, Any]]:
    """The spans written to ``path`` so far (none while it does not exist)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def span_time(stamp: str) -> float:
    """A span's ISO 8601 timestamp as seconds since the epoch."""
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def span_seconds(span: dict[str, Any]) -> float:
    return span_time(span["end_time"]) - span_time(span["start_time"])
