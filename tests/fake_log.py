"""Fake deliveries for the gateway's consumers (the log, dead-letter notices, heartbeats): real
aiormq deliveries (the log's; ``aio_pika.IncomingMessage`` objects around them for the others)
whose properties went through pamqp's frame encoding, on a channel that records how each was
settled.  For pure unit tests; guarantees are tested on the real broker."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import aio_pika
from aio_pika import IncomingMessage
from aiormq.abc import DeliveredMessage

from shared import wire
from shared.messages import ClassifyRequest, EventBatch, JobEvent, new_job_id
from shared.states import JobStatus
from tests.wire_helpers import bare_delivery, delivered

MODEL = "efficientnet_lite0"


@dataclass
class FakeChannel:
    """What a consumer's message settles on: records ("ack", tag, multiple) or ("reject" |
    "nack", tag, requeue); ``closed`` makes every settlement fail as on a channel that just
    closed."""

    closed: bool = False
    settled: list[tuple[str, int, bool]] = field(default_factory=list)
    is_closed = False
    connection = SimpleNamespace(basic_nack=True)

    def _record(self, what: str, tag: int, requeue: bool) -> None:
        if self.closed:
            raise ConnectionError("the channel closed")
        self.settled.append((what, tag, requeue))

    async def basic_ack(self, delivery_tag: int, multiple: bool = False, wait: bool = True) -> None:
        self._record("ack", delivery_tag, multiple)

    async def basic_reject(self, delivery_tag: int, requeue: bool = False) -> None:
        self._record("reject", delivery_tag, requeue)

    async def basic_nack(
        self, delivery_tag: int, multiple: bool = False, requeue: bool = True
    ) -> None:
        self._record("nack", delivery_tag, requeue)


class FakeLog:
    """Entries of the event log as the follower receives them: each with the next offset."""

    def __init__(self, channel: FakeChannel | None = None) -> None:
        self.channel = channel or FakeChannel()
        self._offsets = itertools.count()

    def entry(
        self, out: wire.Outgoing | tuple[bytes, str], user_id: str | None = None
    ) -> DeliveredMessage:
        """``out`` as built by shared.wire, or (body, routing key) for anything at all."""
        if isinstance(out, wire.Outgoing):
            message, routing_key = out.message, out.routing_key
        else:
            message, routing_key = aio_pika.Message(out[0]), out[1]
        offset = next(self._offsets)
        message.headers = {**(message.headers or {}), "x-stream-offset": offset}
        if user_id is not None:
            message.user_id = user_id
        return bare_delivery(message, routing_key, offset + 1, self.channel)

    def event(self, event: JobEvent, user_id: str | None = None) -> DeliveredMessage:
        return self.entry(wire.event_message(event), user_id)

    def events(self, *events: JobEvent, user_id: str | None = None) -> DeliveredMessage:
        """Several events in one message, as replicas and gateways batch them."""
        return self.entry(wire.events_message(EventBatch(events)), user_id)


def request(**fields: Any) -> ClassifyRequest:
    values: dict[str, Any] = {
        "job_id": new_job_id(),
        "model": MODEL,
        "image_name": "cat.jpg",
        "image": b"\xff\xd8 not really a jpeg",
        "queued_at": time.time(),
        **fields,
    }
    return ClassifyRequest(**values)


def queued(**fields: Any) -> JobEvent:
    """A job's "queued" event, as the gateway that accepted it (broker user "gw") writes it."""
    return JobEvent.for_request(request(**{"requested_by": "gw", **fields}), JobStatus.QUEUED)


def notice(out: wire.Outgoing, channel: FakeChannel, reason: str = "rejected") -> IncomingMessage:
    """A dead-lettered request, as the notices queue delivers it."""
    message = out.message
    message.headers = {**(message.headers or {}), "x-first-death-reason": reason}
    return delivered(message, "classify", channel=channel)
