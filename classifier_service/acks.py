"""Acknowledging a batch of deliveries with as few frames as is safe.

A quorum queue settles each ack as a Raft command, so one ``basic.ack`` with
``multiple=True`` for a batch of four costs the broker (and us) a quarter of four single
acks.  But ``multiple`` acks *every* unsettled delivery on the channel up to that tag,
including any still waiting in the replica's inbox, so it is used only when the batch is
exactly the channel's unsettled deliveries up to its highest tag.  Otherwise each
message is acked on its own.  Every delivery is settled exactly once either way.
"""

from __future__ import annotations

from collections.abc import Sequence

from aio_pika.abc import AbstractIncomingMessage


class AckBook:
    def __init__(self) -> None:
        # For every delivery handed to us and not yet settled, keyed by the message object:
        # (its channel, its delivery tag).  Tags count per channel, and a robust connection
        # reopens channels with fresh counters.  Read at delivery, while the channel is open.
        self._open: dict[int, tuple[int, int]] = {}

    def __len__(self) -> int:
        return len(self._open)

    def delivered(self, message: AbstractIncomingMessage) -> None:
        self._open[id(message)] = (id(message.channel), message.delivery_tag or 0)

    def settled(self, message: AbstractIncomingMessage) -> None:
        """The message was acked, nacked or rejected on its own."""
        self._open.pop(id(message), None)

    def covers_exactly(self, batch: Sequence[AbstractIncomingMessage]) -> bool:
        """Would one ``multiple`` ack on the batch's last tag settle the batch and nothing else?"""
        keys = {self._open.get(id(m)) for m in batch}
        if None in keys or len(keys) != len(batch):
            return False
        channels = {key[0] for key in keys if key is not None}
        if len(channels) != 1:
            return False
        (channel,) = channels
        highest = max(key[1] for key in keys if key is not None)
        return all(
            key in keys for key in self._open.values() if key[0] == channel and key[1] <= highest
        )

    async def ack_batch(self, batch: Sequence[AbstractIncomingMessage]) -> None:
        if len(batch) > 1 and self.covers_exactly(batch):
            last = max(batch, key=lambda m: m.delivery_tag or 0)
            for message in batch:
                self.settled(message)
            await last.ack(multiple=True)
            return
        for message in batch:
            self.settled(message)
            await message.ack()
