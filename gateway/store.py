"""Jobs by ID, the indexes built from their events, and the long-polls waiting on them.

Each job is kept as the latest ``JobEvent`` snapshot.  Events arrive from the
shared event log, possibly twice or out of order (redeliveries, reconnects,
several gateways), so a snapshot only ever replaces a less advanced one: a job
shows exactly one final state whatever the order.  Long-polls are futures keyed
by job ID, woken on every change of their job: no sleeping, no polling.

Jobs that expired (retention) or were deleted leave a tombstone, so the API can
tell "known but gone" (410) from "never seen" (404).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Protocol

from shared.errors import JobGone, JobNotFound
from shared.logs import job_fields
from shared.messages import JobEvent
from shared.states import JobStatus

log = logging.getLogger(__name__)


def _disagreement(current: JobEvent, event: JobEvent) -> str | None:
    """What a later event says about the job's input that its earlier one does not: a replica
    must report on the job it was given, not another model or image under the same ID."""
    if event.error is not None and event.error.code == "dead_lettered":
        return None  # may know nothing but the job ID
    if event.model != current.model:
        return f"model {event.model!r}, but the job is for {current.model!r}"
    if event.image_sha256 and current.image_sha256 and event.image_sha256 != current.image_sha256:
        return "another image than the job's"
    return None


def _lacks(event: JobEvent, current: JobEvent) -> bool:
    """Would taking what ``event`` leaves out from ``current`` change it?  Usually not (an event
    is a full snapshot), and then it is kept as it is: the log's hot path makes no copy."""
    return (
        (not event.queued_at and current.queued_at != event.queued_at)
        or (not event.idempotency_key and current.idempotency_key != event.idempotency_key)
        or (not event.image_sha256 and current.image_sha256 != event.image_sha256)
        or (not event.batch and current.batch != event.batch)
        or (not event.owner and current.owner != event.owner)
        or (not event.requested_by and current.requested_by != event.requested_by)
        or (not event.model_version and current.model_version != event.model_version)
    )


class JobObserver(Protocol):
    """Told of every change the store records (status page, metrics).  Called synchronously
    on the event loop for each event, replays included, so it must be cheap."""

    def job_changed(self, previous: JobEvent | None, current: JobEvent) -> None: ...

    def job_removed(self, job_id: str) -> None: ...


class JobStore:
    def __init__(self, *, ttl: float, max_jobs: int, observers: Sequence[JobObserver] = ()) -> None:
        self._ttl = ttl
        self._observers = tuple(observers)
        self._max_jobs = max_jobs
        self._jobs: dict[str, JobEvent] = {}
        # Final jobs in the order they became final: expiry and eviction look only here, so a
        # queued or running job is never evicted, however many finished ones arrive.
        self._finished: OrderedDict[str, None] = OrderedDict()
        self._tombstones: OrderedDict[str, str] = OrderedDict()
        # Jobs still queued, in acceptance order, per model (each model has its own work queue):
        # a job's position is its index among its model's.
        self._queued: dict[str, OrderedDict[str, None]] = {}
        # Batch ID -> its jobs' IDs by index, from the jobs' own events (any gateway's batches).
        self._batches: dict[str, dict[int, str]] = {}
        # Keyed by (owner, key): on a gateway with tokens each client has its own keys.
        self._by_idempotency_key: dict[tuple[str | None, str], str] = {}
        # (model, image digest) -> the latest job that succeeded on exactly those inputs.
        # (owner, model, image digest): a result is reused only for the client that owns it.
        self._by_input: dict[tuple[str | None, str, str], str] = {}
        # Woken on every change of their job; each waiter re-checks its own condition.
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        # Set on shutdown: every long-poll, pending or new, answers at once.
        self._released = False

    def __len__(self) -> int:
        return len(self._jobs)

    @property
    def waiting(self) -> int:
        return sum(len(w) for w in self._waiters.values())

    @property
    def released(self) -> bool:
        """True once shutdown began: waits return at once, so streams should end."""
        return self._released

    def apply(self, event: JobEvent) -> bool:
        """Record an event; return whether it changed what clients see."""
        if event.job_id in self._tombstones:
            return False
        if self._expired(event, time.time()):
            self._bury(event.job_id, "expired")
            return False
        current = self._jobs.get(event.job_id)
        if current is not None:
            # Events are full snapshots built from the request (idempotency key included), so
            # an event that arrives too late to advance the job has nothing to add.
            if not current.status.may_become(event.status):
                return False
            mismatch = _disagreement(current, event)
            if mismatch:
                log.warning(
                    "ignoring %s event of job %s: %s",
                    event.status,
                    event.job_id,
                    mismatch,
                    extra=job_fields(event.job_id, event.model),
                )
                return False
            # Except a dead letter that could not be read, which knows only the job ID, and an
            # event whose owner, batch and key were dropped as a producer's word
            # (gateway/log_follower.py): what the job's earlier events established stays.
            if _lacks(event, current):
                event = event.advance(
                    event.status,
                    queued_at=event.queued_at or current.queued_at,
                    idempotency_key=event.idempotency_key or current.idempotency_key,
                    image_sha256=event.image_sha256 or current.image_sha256,
                    batch=event.batch or current.batch,
                    owner=event.owner or current.owner,
                    requested_by=event.requested_by or current.requested_by,
                    model_version=event.model_version or current.model_version,
                )
        self._jobs[event.job_id] = event
        if event.status.is_final:
            self._finished[event.job_id] = None
        self._index(event)
        self._wake(event.job_id)
        for observer in self._observers:
            observer.job_changed(current, event)
        self._evict()
        return True

    def forget(self, job_id: str) -> None:
        """A client deleted the job: drop it, and answer 410 for it from now on."""
        self._bury(job_id, "deleted")

    def discard(self, job_id: str) -> None:
        """The job was never accepted (its publish failed): drop it without a trace."""
        self._finished.pop(job_id, None)
        event = self._jobs.pop(job_id, None)
        if event is not None:
            self._unindex(event)
            self._removed(job_id)
        self._wake(job_id)

    def peek(self, job_id: str) -> JobEvent | None:
        """The job as last recorded, whoever owns it, or None: for the log's own checks, never
        for an answer to a client (use ``get``)."""
        return self._jobs.get(job_id)

    def get(self, job_id: str, owner: str | None = None) -> JobEvent:
        """The job, as ``owner`` may see it: a job submitted with another client's token is
        "not found" for it (404, exactly as an unknown ID), on every gateway."""
        job = self._jobs.get(job_id)
        if job is None:
            if job_id in self._tombstones:
                raise JobGone(job_id, self._tombstones[job_id])
            raise JobNotFound(job_id)
        if owner is not None and job.owner is not None and job.owner != owner:
            raise JobNotFound(job_id)
        if self._expired(job, time.time()):
            self._bury(job_id, "expired")
            raise JobGone(job_id, "expired")
        return job

    def position(self, job_id: str) -> int | None:
        """1 for the next job a replica will take, among the queued jobs this gateway knows."""
        queue = self._queue_of(job_id)
        for index, queued in enumerate(queue, start=1):
            if queued == job_id:
                return index
        return None

    def position_if_newest(self, job_id: str) -> int | None:
        """O(1) position for a job just accepted, which is (about) the last one queued.

        ``position()`` walks the queue, which costs a busy gateway more than the rest of a
        submission (measured with py-spy); a just-accepted job can only be overtaken by the
        few jobs other gateways accepted in the same milliseconds.
        """
        queue = self._queue_of(job_id)
        return len(queue) if job_id in queue else None

    def _queue_of(self, job_id: str) -> OrderedDict[str, None]:
        job = self._jobs.get(job_id)
        return self._queued.get(job.model, OrderedDict()) if job is not None else OrderedDict()

    @property
    def queued(self) -> int:
        return sum(map(len, self._queued.values()))

    def by_idempotency_key(self, key: str, owner: str | None = None) -> JobEvent | None:
        job_id = self._by_idempotency_key.get((owner, key))
        return self._jobs.get(job_id) if job_id else None

    def reusable_result(
        self, model: str, image_sha256: str, owner: str | None = None
    ) -> JobEvent | None:
        """The latest job of ``owner`` that succeeded on exactly these inputs (a reused result
        included), within the retention time."""
        job_id = self._by_input.get((owner, model, image_sha256))
        job = self._jobs.get(job_id) if job_id else None
        if job is None or self._expired(job, time.time()):
            return None
        return job

    async def wait(
        self,
        job_id: str,
        seconds: float,
        since: JobStatus | None = None,
        owner: str | None = None,
    ) -> JobEvent:
        """The job once it is final (or, given ``since``, once its status is not ``since``),
        or as it stands after ``seconds``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        job = self.get(job_id, owner)
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
            job = self.get(job_id, owner)  # raises if it was deleted or discarded meanwhile
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

    def _expired(self, job: JobEvent, now: float) -> bool:
        return job.status.is_final and (job.finished_at or now) + self._ttl < now

    def _index(self, event: JobEvent) -> None:
        if event.status is JobStatus.QUEUED:
            self._queued.setdefault(event.model, OrderedDict())[event.job_id] = None
        else:
            self._dequeue(event)
        if event.batch is not None:
            self._batches.setdefault(event.batch.batch_id, {})[event.batch.index] = event.job_id
        if event.idempotency_key:
            self._by_idempotency_key.setdefault((event.owner, event.idempotency_key), event.job_id)
        if event.status is JobStatus.SUCCEEDED and event.image_sha256:
            self._by_input[(event.owner, event.model, event.image_sha256)] = event.job_id

    def batch_members(self, batch_id: str) -> list[JobEvent]:
        """The jobs this gateway knows of batch ``batch_id``, in the batch's order (from the
        event log: a batch another gateway accepted too).  Empty when none are known."""
        members = self._batches.get(batch_id, {})
        return [self._jobs[members[index]] for index in sorted(members)]

    def _dequeue(self, event: JobEvent) -> None:
        queue = self._queued.get(event.model)
        if queue is not None:
            queue.pop(event.job_id, None)
            if not queue:
                del self._queued[event.model]

    def _unindex(self, event: JobEvent) -> None:
        self._dequeue(event)
        if event.batch is not None:
            members = self._batches.get(event.batch.batch_id, {})
            if members.get(event.batch.index) == event.job_id:
                del members[event.batch.index]
                if not members:
                    del self._batches[event.batch.batch_id]
        key = event.idempotency_key
        if key and self._by_idempotency_key.get((event.owner, key)) == event.job_id:
            del self._by_idempotency_key[(event.owner, key)]
        if event.image_sha256:
            input_key = (event.owner, event.model, event.image_sha256)
            if self._by_input.get(input_key) == event.job_id:
                del self._by_input[input_key]

    def _removed(self, job_id: str) -> None:
        for observer in self._observers:
            observer.job_removed(job_id)

    @property
    def live(self) -> int:
        """Jobs not yet final (queued or running): never evicted."""
        return len(self._jobs) - len(self._finished)

    def _bury(self, job_id: str, reason: str) -> None:
        self._finished.pop(job_id, None)
        event = self._jobs.pop(job_id, None)
        if event is not None:
            self._unindex(event)
            self._removed(job_id)
        self._tombstones[job_id] = reason
        # Tombstones are 32-byte keys; keep as many as jobs, oldest out first.
        while len(self._tombstones) > self._max_jobs:
            self._tombstones.popitem(last=False)
        self._wake(job_id)

    def _evict(self) -> None:
        # Amortised O(1): only the earliest-finished jobs are looked at.  Beyond max_jobs the
        # oldest finished results go first; a live job is never evicted (the work queue's own
        # bound limits how many there can be), so one client's flood of finished jobs cannot
        # take another client's queued or running job away.
        now = time.time()
        while self._finished:
            job_id = next(iter(self._finished))
            expired = self._expired(self._jobs[job_id], now)
            if len(self._jobs) <= self._max_jobs and not expired:
                break
            self._bury(job_id, "expired" if expired else "evicted to stay within IMGQ_MAX_JOBS")
