"""The event log's consumer: every delivery to the follower, acks sent in bulk.

Every gateway reads every message of the log, so what one costs a gateway bounds how many jobs
a deployment can run at all.  Most of that cost was the client library's, not ours: aio-pika
wraps each delivery in an ``IncomingMessage`` and a task of its own, and one ack frame each.
This consumer takes aiormq's bare deliveries (``shared.wire.LogDelivery`` reads what the
follower needs of one) and acks in bulk: a stream's acks are only the consumer's credit
(where a reader resumes is its own offset, ``LogFollower.offset``), so one ``multiple`` ack
settles everything read so far.  It goes out once ``ACK_EVERY`` deliveries are unacked, or
``ACK_DELAY`` seconds after the first of them, whichever comes first: a replay is never held
up for credit, and a quiet log's few deliveries are acked within a moment.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final, Protocol

from aiormq.abc import AbstractChannel, DeliveredMessage

from shared import wire

log = logging.getLogger(__name__)

# The log consumer's prefetch (its credit): large enough that a replay is never throttled by
# acks, which go out every ACK_EVERY deliveries.
LOG_PREFETCH: Final = 2000
ACK_EVERY: Final = LOG_PREFETCH // 4
ACK_DELAY: Final = 0.05


class Follower(Protocol):
    """What reads the entries (``gateway.log_follower.LogFollower``); never raises."""

    def take(self, delivery: wire.LogDelivery) -> None: ...


class LogConsumer:
    def __init__(self, follower: Follower, channel: AbstractChannel) -> None:
        self._follower = follower
        self._channel = channel
        # The highest delivery tag read and not yet acked (0: none), and how many that is.
        self._last = 0
        self._unacked = 0
        self._timer: asyncio.TimerHandle | None = None
        self._acking: set[asyncio.Task[None]] = set()

    async def on_delivery(self, message: DeliveredMessage) -> None:
        """aiormq's consumer callback: read the entry, then count it towards the next ack."""
        try:
            self._follower.take(wire.LogDelivery.of(message))
        except Exception:  # the follower never raises; if it did, the log still goes on
            log.exception("event log entry %s skipped", message.routing_key)
        self._last = max(self._last, message.delivery_tag or 0)
        self._unacked += 1
        if self._unacked >= ACK_EVERY:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(ACK_DELAY, self.flush)

    def flush(self) -> None:
        """Ack everything read so far, with one frame."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._unacked:
            return
        tag, self._last, self._unacked = self._last, 0, 0
        task = asyncio.create_task(self._ack(tag))
        self._acking.add(task)
        task.add_done_callback(self._acking.discard)

    async def _ack(self, tag: int) -> None:
        try:
            await self._channel.basic_ack(tag, multiple=True)
        except Exception as exc:  # the channel closed: the session ends and resumes after it
            log.warning("could not ack the event log up to delivery %d: %r", tag, exc)

    async def acked(self) -> None:
        """Until every ack sent has gone out (or failed)."""
        await asyncio.gather(*self._acking, return_exceptions=True)

    def close(self) -> None:
        """The session is over: nothing more to ack on its channel."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._unacked = 0
