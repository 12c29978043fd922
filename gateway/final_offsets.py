"""Where in the event log each batch job first became final: the order every gateway agrees on.

A batch's callback is sent once, when all its jobs are final, and by exactly one gateway.  Each
job's final event reaches one gateway through the webhooks' due queue; which of those events
completes the batch cannot be told from wall clocks (replicas' clocks differ, events arrive in
any order), but the event log puts every event at one offset that every gateway reads the
same.  So the job whose first final event sits last in the log is the one that completes the
batch, and the gateway handling that job's event delivers (``gateway/webhook_payloads.py``).

The log follower records each offset as it applies the event; a gateway handling a job's due
event first waits here until its own log has reached that job's final event, by which time it
has read every earlier one too.

Imports neither aiohttp nor aio_pika.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import Final

# Jobs remembered, oldest forgotten first: as many as a gateway keeps (IMGQ_MAX_JOBS' default).
# A batch's callback is decided within seconds of its last job ending, never hours later.
MAX_REMEMBERED: Final = 100_000


class FinalOffsets:
    def __init__(self, limit: int = MAX_REMEMBERED) -> None:
        self._limit = limit
        self._offsets: OrderedDict[str, int] = OrderedDict()
        self._waiters: dict[str, set[asyncio.Future[int]]] = {}

    def __len__(self) -> int:
        return len(self._offsets)

    def record(self, job_id: str, offset: int) -> None:
        """The log's entry at ``offset`` is a final event of ``job_id``; only the first counts
        (a repeated final event, from a redelivered job, changes nothing)."""
        if job_id in self._offsets:
            return
        self._offsets[job_id] = offset
        while len(self._offsets) > self._limit:
            self._offsets.popitem(last=False)
        for waiter in self._waiters.pop(job_id, ()):
            if not waiter.done():
                waiter.set_result(offset)

    def get(self, job_id: str) -> int | None:
        return self._offsets.get(job_id)

    async def wait(self, job_id: str, seconds: float) -> int | None:
        """``job_id``'s offset once the log has brought it, or None after ``seconds``."""
        known = self._offsets.get(job_id)
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
