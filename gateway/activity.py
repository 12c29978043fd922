"""Recent job activity for GET /status: the latest few jobs and the recent throughput.

Fed by the job store with every change it records, so it covers every job this gateway
knows (its own, other gateways', and those replayed from the event log), in O(1) per event.
What it hands out carries no job IDs and no image names: the status page is for watching
the fleet, not for reading other people's jobs.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from typing import Any, Final

from shared.messages import JobEvent

# The status page shows this many jobs, newest first.
RECENT_JOBS: Final = 20
# jobs_per_second = jobs that reached a final state in this many seconds / this many seconds.
THROUGHPUT_WINDOW: Final = 60.0


class Activity:
    def __init__(self, *, recent: int = RECENT_JOBS, window: float = THROUGHPUT_WINDOW) -> None:
        self._size = recent
        self._window = window
        # job ID -> latest snapshot, in the order the jobs were first seen (oldest first).
        self._recent: OrderedDict[str, JobEvent] = OrderedDict()
        # finished_at of jobs that became final, roughly in time order (events from several
        # replicas interleave), pruned from the left as they leave the window.
        self._finished: deque[float] = deque()

    def job_changed(self, previous: JobEvent | None, current: JobEvent) -> None:
        if previous is None:
            self._recent[current.job_id] = current
            while len(self._recent) > self._size:
                self._recent.popitem(last=False)
        elif current.job_id in self._recent:
            # Updated in place: a job moves up the list when it is new, not when it finishes.
            self._recent[current.job_id] = current
        if current.status.is_final and (previous is None or not previous.status.is_final):
            now = time.time()
            finished = current.finished_at if current.finished_at is not None else now
            if finished >= now - self._window:
                self._finished.append(finished)
            self._prune(now)

    def job_removed(self, job_id: str) -> None:
        self._recent.pop(job_id, None)

    def recent(self) -> list[dict[str, Any]]:
        return [
            {
                "model": job.model,
                "status": job.status.value,
                "queued_at": job.queued_at,
                "started_at": job.started_at,
                "finished_at": job.finished_at,
            }
            for job in reversed(self._recent.values())
        ]

    def jobs_per_second(self) -> float:
        now = time.time()
        self._prune(now)
        since = now - self._window
        return sum(1 for t in self._finished if t >= since) / self._window

    def _prune(self, now: float) -> None:
        since = now - self._window
        while self._finished and self._finished[0] < since:
            self._finished.popleft()
