"""Everything a replica publishes, on the one channel (with publisher confirms) of a session.

Job events (batches of them, ``events``, and a final event's reply to its producer's
``reply_to`` queue), dead letters, crash reports and heartbeats.  Frames go out in call order,
so one job's events reach the log in the order they were sent; each send returns its confirm
(a future) to wait on when the caller needs it, so a batch's confirms can be awaited together,
or later.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Sequence
from typing import Protocol

from aio_pika.abc import AbstractIncomingMessage, AbstractMessage

from shared import wire
from shared.messages import CrashReport, EventBatch, JobEvent, ReplicaHeartbeat

log = logging.getLogger(__name__)

Confirm = asyncio.Future[object]

# A confirm the broker owes for longer than this will not come: RabbitMQ 3.10 can drop the
# confirms of messages routed to a stream whose leader node was killed, with the channel open
# and nothing else wrong.  The session is then given up (its deliveries go back to the queue,
# its results are sent again by whoever takes them) rather than wait for ever.  Far above
# what a loaded cluster takes to confirm, far below the stall limit.
CONFIRM_TIMEOUT = 30.0


class ConfirmTimeout(ConnectionError):
    """The broker did not confirm in time: the session is over."""


class Exchange(Protocol):
    """What is used of ``aio_pika.abc.AbstractExchange`` (a stand-in in the unit tests)."""

    def publish(
        self, message: AbstractMessage, routing_key: str, *, mandatory: bool = ...
    ) -> Awaitable[object]: ...


class Publisher:
    def __init__(
        self,
        events: Exchange,
        replies: Exchange,
        dead_letters: Exchange,
        user: str | None,
        lost: asyncio.Event,
        confirm_timeout: float = CONFIRM_TIMEOUT,
    ) -> None:
        self._events = events
        # Direct replies (topology.replies): imgq.replies under least privilege, else the
        # default exchange.
        self._replies = replies
        self._dead_letters = dead_letters
        # The broker user we are connected as: every message we publish says so (user_id).
        self._user = user
        # Set to end the session this publisher belongs to.
        self._lost = lost
        self._confirm_timeout = confirm_timeout

    def _send(self, exchange: Exchange, out: wire.Outgoing) -> Confirm:
        # mandatory=False: no gateway may be listening right now, which is not an error.
        confirm = asyncio.ensure_future(
            exchange.publish(out.message, out.routing_key, mandatory=False)
        )
        # Whoever needs a confirm awaits it; one nobody awaits (its batch was given back
        # meanwhile) must not be reported as an exception never retrieved.
        confirm.add_done_callback(_retrieved)
        return confirm

    def events(self, batch: EventBatch) -> Confirm:
        """Send several job events as one message to the events exchange; its confirm."""
        return self._send(self._events, wire.events_message(batch, user_id=self._user))

    def event(
        self,
        event: JobEvent,
        message: AbstractIncomingMessage | None = None,
    ) -> list[Confirm]:
        """Send ``event`` alone to the events exchange and, for a final event whose producer
        asked, to its ``reply_to`` queue.  Returns the confirms to wait for."""
        sends = [self._send(self._events, wire.event_message(event, user_id=self._user))]
        if message is not None:
            sends += self.reply(event, message)
        return sends

    def reply(self, final: JobEvent, message: AbstractIncomingMessage) -> list[Confirm]:
        """Send the final event to its producer's ``reply_to`` queue, if it asked for one."""
        if not message.reply_to:
            return []
        if not wire.reply_allowed(message.reply_to):
            log.warning(
                "job %s: not replying to %r (only server-named or direct reply-to queues)",
                final.job_id,
                message.reply_to,
            )
            return []
        reply = wire.reply_message(final, message, user_id=self._user)
        return [self._send(self._replies, reply)]

    async def dead_letter(self, message: AbstractIncomingMessage, reason: str) -> None:
        """Put ``message`` in the dead-letter queues with ``reason``; returns once confirmed."""
        out = wire.dead_letter_message(message, reason, user_id=self._user)
        await self.confirmed([self._send(self._dead_letters, out)])

    async def crash_report(self, report: CrashReport) -> None:
        out = wire.crash_report_message(report, user_id=self._user)
        await self.confirmed([self._send(self._events, out)])

    async def heartbeat(self, beat: ReplicaHeartbeat) -> None:
        out = wire.heartbeat_message(beat, user_id=self._user)
        await self.confirmed([self._send(self._events, out)])

    async def confirmed(self, confirms: Sequence[Confirm]) -> None:
        """Wait for every confirm, then raise the first failure, if any (none left unread);
        ``ConfirmTimeout``, and the session ended, if they do not all come in time."""
        try:
            outcomes = await asyncio.wait_for(
                asyncio.gather(*confirms, return_exceptions=True), self._confirm_timeout
            )
        except TimeoutError:
            log.error(
                "the broker did not confirm %d message(s) within %g s; starting a new session",
                len(confirms),
                self._confirm_timeout,
            )
            self._lost.set()
            raise ConfirmTimeout("the broker did not confirm in time") from None
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome


def _retrieved(confirm: Confirm) -> None:
    if not confirm.cancelled():
        confirm.exception()
