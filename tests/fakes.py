"""An in-memory broker for the replica's unit tests: deliveries, acks, publishes and confirms.

Like dramatiq's ``StubBroker``: a test hands the replica deliveries and ``await broker.join()``
returns once every one of them is settled (acked, rejected or given back), with no server and
no sleep.  Deliveries are real ``aio_pika.IncomingMessage`` objects (their properties through
pamqp's real encoding); what the replica does with them lands on ``FakeChannel``, what it
publishes on the ``FakeExchange``\\ s, whose confirms a test may hold back or fail.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import aio_pika
import pamqp.frame
from aio_pika import IncomingMessage
from aiormq.abc import DeliveredMessage
from pamqp import commands
from pamqp.header import ContentHeader

from classifier_service.publisher import Publisher
from shared import wire
from shared.messages import ClassifyRequest, JobEvent

# Seconds after which a wait that should end in milliseconds fails the test instead of hanging.
GIVE_UP = 30


class FakeChannel:
    """What ``IncomingMessage`` uses of aiormq's channel: its state and the three settlements."""

    def __init__(self, broker: FakeBroker) -> None:
        self._broker = broker
        self.is_closed = False
        self.connection = SimpleNamespace(basic_nack=True)

    async def basic_ack(self, delivery_tag: int, multiple: bool = False, wait: bool = True) -> None:
        self._broker.settle(delivery_tag, ("ack", multiple))

    async def basic_nack(
        self, delivery_tag: int, multiple: bool = False, requeue: bool = True, wait: bool = True
    ) -> None:
        self._broker.settle(delivery_tag, ("nack", requeue))

    async def basic_reject(
        self, delivery_tag: int, requeue: bool = True, wait: bool = True
    ) -> None:
        self._broker.settle(delivery_tag, ("reject", requeue))


@dataclass
class Published:
    exchange: str
    routing_key: str
    message: aio_pika.abc.AbstractMessage

    def events(self) -> list[JobEvent]:
        """The job events it carries: one, or a batch (``job.events``)."""
        delivery = wire.LogDelivery(self.routing_key, self.message.body, None, {})
        entries = wire.parse_log_entries(delivery).entries
        return [entry for entry, _ in entries if isinstance(entry, JobEvent)]


class FakeExchange:
    def __init__(self, name: str, broker: FakeBroker) -> None:
        self.name = name
        self._broker = broker

    def publish(
        self, message: aio_pika.abc.AbstractMessage, routing_key: str, *, mandatory: bool = True
    ) -> asyncio.Future[object]:
        confirm: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        if self._broker.refuse_publishes is not None:
            confirm.set_exception(self._broker.refuse_publishes)
            return confirm
        self._broker.published.append(Published(self.name, routing_key, message))
        self._broker.changed()
        if self._broker.holding_confirms:
            self._broker.held.append(confirm)
        else:
            confirm.set_result(None)
        return confirm


@dataclass
class FakeBroker:
    """One channel's worth of broker: what was delivered, how each delivery was settled (by
    tag: ("ack", multiple) / ("nack", requeue) / ("reject", requeue)), what was published."""

    settled: dict[int, tuple[str, bool]] = field(default_factory=dict)
    published: list[Published] = field(default_factory=list)
    holding_confirms: bool = False
    held: list[asyncio.Future[object]] = field(default_factory=list)
    # Set to an exception: every publish fails with it (a channel closing under the publisher).
    refuse_publishes: Exception | None = None
    # Set to an exception: the next ack, nack or reject raises it, once.
    fail_next_settlement: Exception | None = None
    _open: set[int] = field(default_factory=set)
    _tags: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.lost = asyncio.Event()
        self.channel = FakeChannel(self)
        self.events = FakeExchange("imgq.events", self)
        self.replies = FakeExchange("", self)
        self.dead_letters = FakeExchange("imgq.dead-letter", self)

    def publisher(
        self, user: str | None = "imgq-classifier", confirm_timeout: float = GIVE_UP
    ) -> Publisher:
        """A publisher on this broker; ``self.lost`` is set when it gives the session up."""
        return Publisher(
            self.events, self.replies, self.dead_letters, user, self.lost, confirm_timeout
        )

    def delivery(
        self, message: aio_pika.Message, *, redelivered: bool = False, routing_key: str = "classify"
    ) -> IncomingMessage:
        """``message`` as the replica would receive it, open until settled."""
        header = ContentHeader(body_size=len(message.body), properties=message.properties)
        _, _, decoded = pamqp.frame.unmarshal(pamqp.frame.marshal(header, 1))
        assert isinstance(decoded, ContentHeader)
        tag = next(self._tags)
        deliver = commands.Basic.Deliver(
            consumer_tag="fake",
            delivery_tag=tag,
            redelivered=redelivered,
            routing_key=routing_key,
            exchange="imgq.requests",
        )
        self._open.add(tag)
        self.changed()
        return IncomingMessage(DeliveredMessage(deliver, decoded, message.body, self.channel))

    def request(self, request: ClassifyRequest, **kwargs: Any) -> IncomingMessage:
        return self.delivery(wire.request_message(request).message, **kwargs)

    def settle(self, tag: int, how: tuple[str, bool]) -> None:
        assert not self.channel.is_closed, "a settlement on a closed channel"
        multiple = how == ("ack", True)
        tags = sorted(t for t in self._open if t <= tag) if multiple else [tag]
        assert tag in self._open, f"delivery {tag} settled twice, or never delivered"
        if self.fail_next_settlement is not None:
            error, self.fail_next_settlement = self.fail_next_settlement, None
            raise error
        for each in tags:
            self._open.discard(each)
            self.settled[each] = how
        self.changed()

    def close_channel(self) -> None:
        """The channel is gone: the broker takes back what it had delivered on it."""
        self.channel.is_closed = True
        self._open.clear()
        self.changed()

    def changed(self) -> None:
        self._changed.set()

    def reopen(self) -> None:
        """A new session's channel (deliveries from now on come on it)."""
        self.channel = FakeChannel(self)
        self.refuse_publishes = None
        self.changed()

    async def join(self) -> None:
        """Return once every delivery is settled (or given back with its channel)."""
        await self.until(lambda: not self._open)

    async def until(self, condition: Callable[[], bool]) -> None:
        """Return once ``condition()`` holds, checked after each delivery, settlement and
        publish (the deadline only keeps a broken test from hanging)."""
        async with asyncio.timeout(GIVE_UP):
            while not condition():
                self._changed.clear()
                await self._changed.wait()

    def release_confirms(self) -> None:
        self.holding_confirms = False
        for confirm in self.held:
            confirm.set_result(None)
        self.held.clear()

    def events_of(self, job_id: str) -> list[JobEvent]:
        return [
            event
            for p in self.published
            if p.exchange == "imgq.events" and p.routing_key.startswith("job.")
            for event in p.events()
            if event.job_id == job_id
        ]

    def event_messages(self) -> list[list[JobEvent]]:
        """Each message of job events published, as the events it carries."""
        return [
            p.events()
            for p in self.published
            if p.exchange == "imgq.events" and p.routing_key.startswith("job.")
        ]

    def dead_lettered(self) -> list[Published]:
        return [p for p in self.published if p.exchange == "imgq.dead-letter"]


class FakeSessions:
    """The replica's broker sessions (``classifier_service.worker.Sessions``), on a fake broker:
    one session, attached and consuming until the replica stops consuming."""

    def __init__(self, replica: Any, broker: FakeBroker, confirm_timeout: float = GIVE_UP) -> None:
        self._replica = replica
        self._broker = broker
        self._confirm_timeout = confirm_timeout
        self.consuming = False
        self.ready = asyncio.Event()
        self.stopped = asyncio.Event()

    async def run(self) -> None:
        self._replica.attach(self._broker.publisher(confirm_timeout=self._confirm_timeout))
        self.consuming = True
        self.ready.set()
        await asyncio.Event().wait()

    async def stop_consuming(self) -> None:
        self.consuming = False
        self.stopped.set()

    async def deliver(self, message: IncomingMessage) -> None:
        assert self.consuming, "not consuming"
        await self._replica.inbox.deliver(message)
