"""The jobs a replica is running, in a small file that outlives its process.

Written before a batch's inference starts, emptied once its inference is over (its results and
acks then go out while the next batch runs: a crash then is no fault of those jobs, which,
still unacked, simply come back).  A replica that finds jobs in it when it starts died running
them (killed, crashed, or stalled and restarted): it reports them
(``shared.messages.CrashReport``), and every replica counts those reports towards the job's
crash limit (``shared/topology.py``, ``CRASH_LIMIT``).  A replica that stops on purpose empties
it first: a job it was running when told to stop did not crash it.

The file survives what a supervisor's restart keeps: the launcher's log folder, a container's
own filesystem under compose's restart policy, an emptyDir in a Kubernetes pod.  Not fsynced:
a process that dies leaves what it wrote in the page cache, and a machine that dies takes its
pod's emptyDir with it anyway.

One small write per batch (no extra broker round trip, no JSON); a file that cannot be written
costs only the crash accounting, never a job, and is logged once.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from shared.messages import is_job_id

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Leftover:
    """What a previous process left in the journal: it died running these jobs."""

    life: str
    jobs: tuple[str, ...]


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = path
        # This process' name in the file and in its crash reports.
        self.life = uuid.uuid4().hex
        self._fd: int | None = None
        self.leftover = self._read_leftover()
        try:
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            log.warning("job journal %s cannot be opened (%s): crashes go uncounted", path, exc)

    def _read_leftover(self) -> Leftover | None:
        try:
            lines = self.path.read_text(encoding="ascii", errors="replace").split("\n")
        except OSError:  # none yet: the first start here
            return None
        jobs = tuple(line for line in lines[1:] if is_job_id(line))
        return Leftover(lines[0], jobs) if jobs else None

    def reported(self) -> None:
        """The leftover was reported: it may be overwritten now."""
        self.leftover = None

    def hold(self, job_ids: Sequence[str]) -> None:
        """These jobs are about to run."""
        self._write(("\n".join([self.life, *job_ids]) + "\n").encode("ascii"))

    def release(self) -> None:
        """The jobs held are inferred (or given back): none is running."""
        self._write(b"")

    def _write(self, data: bytes) -> None:
        if self._fd is None:
            return
        try:
            # In place, then cut to length: at no moment does the file name fewer jobs than
            # are running (a crash between the two leaves stale IDs of finished jobs, which
            # are never delivered again, so their reports count for nothing).
            os.pwrite(self._fd, data, 0)
            os.ftruncate(self._fd, len(data))
        except OSError as exc:
            log.warning("job journal %s not written (%s): crashes go uncounted", self.path, exc)
            self.close()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
