"""Turn an outgoing aio-pika message into the ``IncomingMessage`` a consumer would get.

The properties go through pamqp's real frame encoding and back, so header values have the
types a consumer really sees (a float header becomes a 32-bit float, for instance).  For
pure unit tests of ``shared.wire`` and the replica's acks; everything else uses the broker.
"""

from __future__ import annotations

import base64
from typing import Any

import aio_pika
import pamqp.frame
from aio_pika import IncomingMessage
from aiormq.abc import DeliveredMessage
from pamqp import commands
from pamqp.header import ContentHeader

from shared.messages import ClassifyRequest


class RecordingChannel:
    """Stands in for aiormq's channel where a test checks which acks a replica sends."""

    is_closed = False

    def __init__(self) -> None:
        self.acks: list[tuple[int, bool]] = []

    async def basic_ack(self, delivery_tag: int, multiple: bool = False, wait: bool = True) -> None:
        self.acks.append((delivery_tag, multiple))


def delivered(
    message: aio_pika.Message,
    routing_key: str = "classify",
    *,
    delivery_tag: int = 1,
    channel: Any = None,
) -> IncomingMessage:
    return IncomingMessage(bare_delivery(message, routing_key, delivery_tag, channel))


def bare_delivery(
    message: aio_pika.Message,
    routing_key: str = "classify",
    delivery_tag: int = 1,
    channel: Any = None,
) -> DeliveredMessage:
    """What aiormq hands a consumer that takes its deliveries bare (the gateway's log)."""
    header = ContentHeader(body_size=len(message.body), properties=message.properties)
    _, _, decoded = pamqp.frame.unmarshal(pamqp.frame.marshal(header, 1))
    assert isinstance(decoded, ContentHeader)
    deliver = commands.Basic.Deliver(
        consumer_tag="test", delivery_tag=delivery_tag, routing_key=routing_key, exchange="x"
    )
    return DeliveredMessage(deliver, decoded, message.body, channel)


def v1_body(request: ClassifyRequest) -> dict[str, Any]:
    """What a producer written against the version 1 documentation publishes (JSON)."""
    return {
        "v": 1,
        "job_id": request.job_id,
        "model": request.model,
        "image_name": request.image_name,
        "image_b64": base64.b64encode(request.image).decode(),
        "queued_at": request.queued_at,
    }
