"""The "queued" events of confirmed jobs: published in the background, kept until confirmed.

A gateway publishes a job's "queued" event only once the broker has confirmed the job's
request, so every "queued" event in the log is a job the work queue really holds, and no
job shows "queued" for ever on the other gateways because its request was refused.  Nobody
waits for the event's own confirm (a 202 costs one broker round trip, the request's).

The events go out as batches (``job.events``), one publish at a time: whatever was confirmed
while the last publish was in flight goes out together in the next.  One job alone goes out at
once, as before; under load, one message carries many jobs' events, and the broker and every
gateway reading the log handle one message instead of one per job.

An event the broker did not confirm (the connection went) stays here and is published again
at the start of the next session; should the process end first, the other gateways learn of
the job from its "started" event instead, which carries everything "queued" did.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

from shared.messages import JobEvent

log = logging.getLogger(__name__)

# Bounded like the work queue the events describe; past it the oldest are given up (their
# jobs still show on other gateways once started).
MAX_UNSENT: Final = 10_000
# The most events one message carries (a few hundred bytes each).
MAX_PER_MESSAGE: Final = 256

Publish = Callable[[Sequence[JobEvent]], Awaitable[None]]


class QueuedEvents:
    def __init__(
        self, publish: Publish, *, limit: int = MAX_UNSENT, most: int = MAX_PER_MESSAGE
    ) -> None:
        self._publish = publish
        self._limit = limit
        self._most = most
        # Every event the broker has not confirmed yet, oldest first ...
        self._unsent: OrderedDict[str, JobEvent] = OrderedDict()
        # ... and those of them not in a publish now: the next message's.
        self._waiting: OrderedDict[str, JobEvent] = OrderedDict()
        # The one task publishing, while there is anything to publish.
        self._sender: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        """Events not confirmed yet (in flight, or waiting for the next session)."""
        return len(self._unsent)

    def confirmed(self, queued: JobEvent) -> None:
        """The broker confirmed this job's request: publish its "queued" event."""
        self._unsent[queued.job_id] = queued
        self._waiting[queued.job_id] = queued
        while len(self._unsent) > self._limit:
            job_id, _ = self._unsent.popitem(last=False)
            self._waiting.pop(job_id, None)
            log.warning("the queued event of job %s was never confirmed; given up", job_id)
        self._wake()

    def resend(self) -> None:
        """A new session: publish every event the broker has not confirmed yet."""
        if self._unsent:
            log.info("publishing %d queued events again (not confirmed before)", len(self))
        self._waiting = OrderedDict(self._unsent)
        self._wake()

    async def settled(self) -> None:
        """Until nothing is being published, confirmed or not (tests, shutdown)."""
        while self._sender is not None and not self._sender.done():
            await asyncio.gather(self._sender, return_exceptions=True)

    def _wake(self) -> None:
        if self._waiting and (self._sender is None or self._sender.done()):
            self._sender = asyncio.create_task(self._send_waiting())

    async def _send_waiting(self) -> None:
        while self._waiting:
            batch = [
                self._waiting.popitem(last=False)[1] for _ in range(self._most) if self._waiting
            ]
            try:
                await self._publish(batch)
            except Exception as exc:  # kept for the next session, whatever went wrong
                log.warning("%d queued event(s) not confirmed: %r", len(batch), exc)
                return
            for queued in batch:
                self._unsent.pop(queued.job_id, None)
