"""The "queued" events of confirmed jobs: published in the background, kept until confirmed.

A gateway publishes a job's "queued" event only once the broker has confirmed the job's
request, so every "queued" event in the log is a job the work queue really holds, and no
job shows "queued" for ever on the other gateways because its request was refused.  Nobody
waits for the event's own confirm (a 202 costs one broker round trip, the request's).  An
event the broker did not confirm (the connection went) stays here and is published again at
the start of the next session; should the process end first, the other gateways learn of
the job from its "started" event instead, which carries everything "queued" did.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Final

from shared.messages import JobEvent

log = logging.getLogger(__name__)

# Bounded like the work queue the events describe; past it the oldest are given up (their
# jobs still show on other gateways once started).
MAX_UNSENT: Final = 10_000


class QueuedEvents:
    def __init__(
        self, publish: Callable[[JobEvent], Awaitable[None]], *, limit: int = MAX_UNSENT
    ) -> None:
        self._publish = publish
        self._limit = limit
        self._unsent: OrderedDict[str, JobEvent] = OrderedDict()
        # Publishes in flight, kept so that they are not garbage-collected.
        self._in_flight: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        """Events not confirmed yet (in flight, or waiting for the next session)."""
        return len(self._unsent)

    def confirmed(self, queued: JobEvent) -> None:
        """The broker confirmed this job's request: publish its "queued" event."""
        self._unsent[queued.job_id] = queued
        while len(self._unsent) > self._limit:
            job_id, _ = self._unsent.popitem(last=False)
            log.warning("the queued event of job %s was never confirmed; given up", job_id)
        self._send(queued)

    def resend(self) -> None:
        """A new session: publish every event the broker has not confirmed yet."""
        if self._unsent:
            log.info("publishing %d queued events again (not confirmed before)", len(self))
        for queued in list(self._unsent.values()):
            self._send(queued)

    async def settled(self) -> None:
        """Until every publish in flight has ended, confirmed or not (tests, shutdown)."""
        while self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)

    def _send(self, queued: JobEvent) -> None:
        task = asyncio.create_task(self._publish_one(queued))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    async def _publish_one(self, queued: JobEvent) -> None:
        try:
            await self._publish(queued)
        except Exception as exc:  # kept for the next session, whatever went wrong
            log.warning("queued event of job %s not confirmed: %r", queued.job_id, exc)
            return
        self._unsent.pop(queued.job_id, None)
