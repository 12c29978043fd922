"""A replica's health: is it alive (liveness), may it take work (readiness), is it stuck?

The replica's event loop rewrites its health file (``IMGQ_HEALTH_FILE``) every heartbeat
interval, whether or not the broker is reachable, with what it knows: a small JSON object
(``Health``).  Two readings of that file, one command each, are what every supervisor uses:

- **liveness** (``python -m classifier_service.healthcheck``, or ``--live``): the file is
  fresh, so the loop runs, and the replica is not stalled.  Restart the process when it fails.
  It never depends on the broker: an outage must not get every replica restarted.
- **readiness** (``--ready``): fresh, connected to the broker and consuming.  Route no work to
  (and, in a rollout, do not count) a replica that fails it; never restart it for that.

*Stalled* means it holds work and has made no progress for ``IMGQ_STALL_TIMEOUT`` seconds
(``Progress``): the loop is alive, heartbeats may still flow, and nothing moves.

Imports nothing heavy: the health check runs every few seconds, and the launcher reads the
same file in-process.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

# A file older than this many heartbeat intervals means the loop that writes it is stuck...
MISSED_WRITES: Final = 3
# ... but never less than this: a loaded machine can hold up a healthy loop for a second or
# two, and a false "dead" costs a restart and its jobs' redelivery.
MIN_STALE_SECONDS: Final = 10.0


@dataclass(frozen=True, slots=True)
class Health:
    """What the health file says (its JSON object, one field each)."""

    at: float  # when it was written (Unix seconds)
    interval: float  # seconds until the next write
    ready: bool  # connected to the broker and consuming
    stalled: bool
    # What is wrong, or what it is doing: "consuming", "not connected to the broker", ...
    reason: str
    replica: str = ""
    pid: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Health:
        """The file's contents; ``ValueError`` when they are not a health report."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        at, interval = _number(data.get("at")), _number(data.get("interval"))
        if at is None or interval is None:
            raise ValueError("'at' and 'interval' must be numbers")
        ready, stalled, reason = data.get("ready"), data.get("stalled"), data.get("reason")
        if not isinstance(ready, bool) or not isinstance(stalled, bool):
            raise ValueError("'ready' and 'stalled' must be true or false")
        return cls(
            at=at,
            interval=interval,
            ready=ready,
            stalled=stalled,
            reason=str(reason),
            replica=str(data.get("replica", "")),
            pid=data.get("pid", 0) if isinstance(data.get("pid"), int) else 0,
        )


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def write(path: Path, health: Health) -> None:
    """Replace the file at once (write aside, then rename): a reader never sees half of it."""
    aside = path.with_name(path.name + ".tmp")
    aside.write_text(health.to_json(), encoding="utf-8")
    os.replace(aside, path)


def read(path: Path) -> Health | str:
    """The file's report, or why there is none to read."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return f"{path} does not exist (not started, or stopped)"
    except OSError as exc:
        return f"{path} cannot be read: {exc}"
    try:
        return Health.from_json(text)
    except ValueError as exc:
        return f"{path} is not a health report: {exc}"


def max_age(interval: float) -> float:
    return max(MISSED_WRITES * interval, MIN_STALE_SECONDS)


def liveness(path: Path, now: float | None = None) -> str | None:
    """Why the replica writing ``path`` is not alive, or None when it is."""
    health = read(path)
    if isinstance(health, str):
        return health
    age = (time.time() if now is None else now) - health.at
    limit = max_age(health.interval)
    if age > limit:
        return f"last written {age:.0f} s ago, over {limit:.0f} s: its loop is stuck or gone"
    if health.stalled:
        return f"stalled: {health.reason}"
    return None


def readiness(path: Path, now: float | None = None) -> str | None:
    """Why the replica writing ``path`` may not take work now, or None when it may."""
    problem = liveness(path, now)
    if problem is not None:
        return problem
    health = read(path)
    assert not isinstance(health, str)
    return None if health.ready else health.reason


class Progress:
    """When the replica last moved: took work while it held none, or settled some.

    ``holding`` says how many deliveries it holds unsettled (waiting, or in a batch).  Stalled:
    holding some, and nothing moved for ``limit`` seconds.
    """

    def __init__(
        self,
        holding: Callable[[], int],
        limit: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._holding = holding
        self._limit = limit
        self._clock = clock
        self._moved = clock()

    def moved(self) -> None:
        self._moved = self._clock()

    def stalled_for(self) -> float | None:
        """Seconds without progress while holding work, once past the limit; else None."""
        if not self._holding():
            return None
        still = self._clock() - self._moved
        return still if still > self._limit else None
