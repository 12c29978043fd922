"""Jobs by ID, and the long-polls waiting on them.

Each job is kept as the latest ``JobEvent`` snapshot.  Events may arrive twice
or out of order (redeliveries, reconnects), so a snapshot only ever replaces a
less advanced one.  Long-polls are futures keyed by job ID, resolved when the job
changes state: no sleeping, no polling inside the gateway.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict

from shared.errors import JobNotFound
from shared.messages import JobEvent
from shared.states import JobStatus


class JobStore:
    def __init__(self, *, ttl: float, max_jobs: int) -> None:
        self._ttl = ttl
        self._max_jobs = max_jobs
        # Insertion order is arrival order, so the oldest jobs are at the front for eviction.
        self._jobs: OrderedDict[str, JobEvent] = OrderedDict()
        # Woken on every change of their job; each waiter re-checks its own condition.
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        # Set on shutdown: every long-poll, pending or new, answers at once.
        self._released = False

    def __len__(self) -> int:
        return len(self._jobs)

    @property
    def waiting(self) -> int:
        return sum(len(w) for w in self._waiters.values())

    def apply(self, event: JobEvent) -> bool:
        """Record an event; return whether it changed what clients see."""
        current = self._jobs.get(event.job_id)
        if current is not None and not current.status.may_become(event.status):
            return False
        if current is not None and current.queued_at is not None and event.queued_at is None:
            event = event.advance(event.status, queued_at=current.queued_at)
        self._jobs[event.job_id] = event
        self._wake(event.job_id)
        self._evict()
        return True

    def forget(self, job_id: str) -> None:
        self._jobs.pop(job_id, None)
        self._wake(job_id)

    def get(self, job_id: str) -> JobEvent:
        job = self._jobs.get(job_id)
        if job is None:
            raise JobNotFound(job_id)
        return job

    async def wait(self, job_id: str, seconds: float, since: JobStatus | None = None) -> JobEvent:
        """The job once it is final (or, given ``since``, once its status is not ``since``),
        or as it stands after ``seconds``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        job = self.get(job_id)
        while not (job.status.is_final or (since is not None and job.status != since)):
            remaining = deadline - loop.time()
            if remaining <= 0 or self._released:
                break
            waiter: asyncio.Future[None] = loop.create_future()
            waiters = self._waiters.setdefault(job_id, set())
            waiters.add(waiter)
            try:
                await asyncio.wait_for(waiter, remaining)
            except TimeoutError:
                pass
            finally:
                waiters.discard(waiter)
                if not waiters:
                    self._waiters.pop(job_id, None)
            if job_id not in self._jobs:  # forgotten while we waited (a failed publish)
                raise JobNotFound(job_id)
            job = self._jobs[job_id]
        return job

    def release_all(self) -> None:
        """Answer every pending long-poll now (shutdown): clients get the current state."""
        self._released = True
        for job_id in list(self._waiters):
            self._wake(job_id)

    def _wake(self, job_id: str) -> None:
        for waiter in self._waiters.get(job_id, ()):
            if not waiter.done():
                waiter.set_result(None)

    def _evict(self) -> None:
        # Amortised O(1): only the oldest entries are looked at.  A long-running job at the
        # front holds back the expiry of later ones until it finishes; max_jobs still bounds
        # memory meanwhile.
        now = time.time()
        while self._jobs:
            oldest = next(iter(self._jobs.values()))
            expired = oldest.status.is_final and (oldest.finished_at or now) + self._ttl < now
            if len(self._jobs) <= self._max_jobs and not expired:
                break
            self._jobs.popitem(last=False)
