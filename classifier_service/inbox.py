"""Deliveries in: the work queues' consumer callback, and the batches taken from what it holds.

Every delivery handed to the replica is recorded in its ``AckBook`` (unsettled until acked,
rejected or given back) and waits here until the batch loop takes it.  The callback never
raises: aio-pika runs it as a task of its own, where an exception would only be logged by the
event loop while the delivery sat unsettled.
"""

from __future__ import annotations

import asyncio
import logging

from aio_pika.abc import AbstractIncomingMessage
from aio_pika.exceptions import ChannelInvalidStateError

from classifier_service.acks import AckBook
from classifier_service.health import Progress

log = logging.getLogger(__name__)


class Inbox:
    def __init__(self, acks: AckBook, progress: Progress) -> None:
        self._acks = acks
        self._progress = progress
        self._waiting: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()

    def __len__(self) -> int:
        return self._waiting.qsize()

    async def deliver(self, message: AbstractIncomingMessage) -> None:
        """The consumer callback of every work queue."""
        try:
            if not len(self._acks):
                self._progress.moved()  # work taken up after none: the stall clock starts now
            self._acks.delivered(message)
        except ChannelInvalidStateError:
            return  # its channel closed as it arrived: the broker has it back already
        except Exception:
            log.exception("delivery %r not taken; the broker gets it back", message.message_id)
            return
        self._waiting.put_nowait(message)

    async def batch(self, size: int, wait: float) -> list[AbstractIncomingMessage]:
        """The next batch: at least one delivery (waiting for it), at most ``size``, and after
        the first, whatever else arrives within ``wait`` seconds."""
        batch = [await self._waiting.get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while len(batch) < size:
            # Take what is already here first: on Python 3.11, wait_for with a timeout of 0
            # never returns an item, so a zero batch wait would never batch at all.
            if not self._waiting.empty():
                batch.append(self._waiting.get_nowait())
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._waiting.get(), remaining))
            except TimeoutError:
                break
        return batch

    def take_all(self) -> list[AbstractIncomingMessage]:
        """Everything waiting, removed (to be given back, or sorted)."""
        taken = []
        while not self._waiting.empty():
            taken.append(self._waiting.get_nowait())
        return taken

    def drop_closed(self) -> None:
        """Forget what came on a channel now closed: the broker requeued it with the channel."""
        for message in self.take_all():
            if channel_open(message):
                self._waiting.put_nowait(message)
            else:
                self._acks.settled(message)

    async def give_back(self) -> None:
        """Requeue everything waiting (shutdown)."""
        for message in self.take_all():
            self._acks.settled(message)
            await nack_quietly(message)


def channel_open(message: AbstractIncomingMessage) -> bool:
    try:
        message.channel  # noqa: B018 (raises once the delivery's channel is closed)
    except ChannelInvalidStateError:
        return False
    return True


async def nack_quietly(message: AbstractIncomingMessage) -> None:
    """Give a delivery back to its queue; where its channel is gone, the broker already has."""
    try:
        await message.nack(requeue=True)
    except Exception as exc:
        log.debug("nack of %s not sent: %r", message.message_id, exc)
