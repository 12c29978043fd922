"""Where in the event log each job of a batch first became final: the order every gateway agrees
on, and so which job's end completes the batch.

A batch's callback is sent once, when all its jobs are final, and by exactly one gateway.  Each
job's final event reaches one gateway through the webhooks' due queue; which of those events
completes the batch cannot be told from wall clocks (replicas' clocks differ, events arrive in
any order), but the event log puts every event at one offset that every gateway reads the
same.  So the job whose first final event sits last in the log is the one that completes the
batch, and the gateway handling that job's event sends the batch's callback
(``gateway/webhooks.py``).

The log follower records each batch job's first final event as it reads it (its batch, index
and offset); a gateway handling a job's due event first waits here until its own log has read
that far, by which time it has read every earlier end too.  What is recorded is the log's
alone, so a job deleted or evicted from the store meanwhile still counts as ended.

Imports neither aiohttp nor aio_pika.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import Final

from shared.messages import BatchRef

# Jobs remembered, oldest batches forgotten first: as many as a gateway keeps jobs
# (IMGQ_MAX_JOBS' default).  A batch's callback is decided within seconds of its last job
# ending, never after a hundred thousand other batch jobs have ended.
MAX_REMEMBERED: Final = 100_000


class BatchEnds:
    def __init__(self, limit: int = MAX_REMEMBERED) -> None:
        self._limit = limit
        # Batch ID -> its size and, by index, (offset, job ID) of each job's first end.
        self._batches: OrderedDict[str, tuple[int, dict[int, tuple[int, str]]]] = OrderedDict()
        self._count = 0
        self._ended: dict[str, int] = {}  # job ID -> offset, for wait()
        self._waiters: dict[str, set[asyncio.Future[int]]] = {}

    def __len__(self) -> int:
        return self._count

    def record(self, batch: BatchRef, job_id: str, offset: int) -> None:
        """The log's entry at ``offset`` is a final event of ``job_id``, job ``batch.index`` of
        ``batch``; only a job's first counts (a repeat, from a redelivered job, changes
        nothing)."""
        size, ends = self._batches.setdefault(batch.batch_id, (batch.size, {}))
        if batch.index in ends or batch.index >= size:
            return
        ends[batch.index] = (offset, job_id)
        self._ended[job_id] = offset
        self._count += 1
        while self._count > self._limit and len(self._batches) > 1:
            _, (_, gone) = self._batches.popitem(last=False)
            self._count -= len(gone)
            for _, forgotten in gone.values():
                self._ended.pop(forgotten, None)
        for waiter in self._waiters.pop(job_id, ()):
            if not waiter.done():
                waiter.set_result(offset)

    def last(self, batch_id: str) -> str | None:
        """The job whose end completed the batch, once every job of it has ended; else None."""
        size, ends = self._batches.get(batch_id, (0, {}))
        if not size or len(ends) < size:
            return None
        return max(ends.values())[1]

    async def wait(self, job_id: str, seconds: float) -> int | None:
        """``job_id``'s offset once the log has brought its end, or None after ``seconds``."""
        known = self._ended.get(job_id)
        if known is not None:
            return known
        waiter: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        waiters = self._waiters.setdefault(job_id, set())
        waiters.add(waiter)
        try:
            return await asyncio.wait_for(waiter, seconds)
        except TimeoutError:
            return None
        finally:
            waiters.discard(waiter)
            if not waiters and self._waiters.get(job_id) is waiters:
                del self._waiters[job_id]
