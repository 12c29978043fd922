"""The wire format (schema version 2) and batched acks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import aio_pika
import orjson
import pytest

from classifier_service.acks import AckBook
from shared import wire
from shared.errors import MessageError
from shared.messages import ClassifyRequest, EventBatch, JobEvent, JobForgotten, new_job_id
from shared.states import JobStatus
from shared.topology import FORGOTTEN_ROUTING_KEY, REQUEST_ROUTING_KEY
from tests.wire_helpers import RecordingChannel, delivered, v1_body

IMAGE = bytes(range(256)) * 400  # 100 KiB that are not valid UTF-8, nor JSON


def _request(**changes: Any) -> ClassifyRequest:
    fields: dict[str, Any] = {
        "job_id": new_job_id(),
        "model": "efficientnet_lite0",
        "image_name": "upload:cat.jpg",
        "image": IMAGE,
        "queued_at": time.time(),
        "idempotency_key": "order-42",
    } | changes
    return ClassifyRequest(**fields)


def test_the_image_is_the_body_and_metadata_rides_in_headers() -> None:
    request = _request()
    out = wire.request_message(request, content_type="image/jpeg", reply_to="amq.gen-x")
    assert out.routing_key == REQUEST_ROUTING_KEY
    assert out.message.body == IMAGE  # raw: no base64, no JSON around it
    assert out.message.content_type == "image/jpeg"
    assert out.message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert out.message.message_id == request.job_id

    parsed = wire.parse_request(delivered(out.message))
    assert replace(parsed, queued_at=request.queued_at) == request
    assert parsed.image == IMAGE
    # Microseconds survive the trip (a float header would be a 32-bit float on the wire).
    assert abs(parsed.queued_at - request.queued_at) < 1e-6
    assert parsed.idempotency_key == "order-42"
    assert parsed.image_sha256 == request.image_sha256


def test_no_idempotency_key_is_none_not_empty() -> None:
    out = wire.request_message(_request(idempotency_key=None))
    assert wire.parse_request(delivered(out.message)).idempotency_key is None


def _with_headers(**changes: Any) -> aio_pika.Message:
    message = wire.request_message(_request()).message
    headers = dict(message.headers or {})
    for key, value in changes.items():
        if value is None:
            headers.pop(key, None)
        else:
            headers[key] = value
    message.headers = headers
    return message


@pytest.mark.parametrize(
    ("headers", "error"),
    [
        ({"model": None}, "'model'"),
        ({"model": "m" * 201}, "at most 200"),
        ({"image_name": ""}, "'image_name'"),
        ({"queued_at_us": "yesterday"}, "queued_at_us"),
        ({"queued_at_us": None}, "queued_at_us"),
        ({"v": 3}, "schema version"),
        ({"model": 7}, "'model' must be a string"),
    ],
)
def test_bad_v2_requests_say_what_is_wrong(headers: dict[str, Any], error: str) -> None:
    with pytest.raises(MessageError, match=error):
        wire.parse_request(delivered(_with_headers(**headers)))


def test_a_v2_request_needs_its_job_id_and_its_image() -> None:
    message = wire.request_message(_request()).message
    message.message_id = "../etc/passwd"
    with pytest.raises(MessageError, match="message_id"):
        wire.parse_request(delivered(message))
    empty = wire.request_message(_request(image=b"")).message
    with pytest.raises(MessageError, match="empty"):
        wire.parse_request(delivered(empty))


def test_a_json_request_of_the_dropped_version_1_is_refused_saying_what_a_request_is() -> None:
    """Version 1 (JSON with the image in base64) was dropped before the first release: such a
    request is a MessageError (dead-lettered) that says what a request is now."""
    request = _request(idempotency_key=None)
    v1 = aio_pika.Message(
        orjson.dumps(v1_body(request)), content_type="application/json", message_id=request.job_id
    )
    for parse in (wire.parse_request, wire.request_info):
        with pytest.raises(MessageError, match=r"'v' must be the schema version 2.*headers"):
            parse(delivered(v1))
    with pytest.raises(MessageError, match="schema version"):
        wire.parse_request(delivered(aio_pika.Message(b"not a request")))


def test_a_reply_goes_to_the_producers_queue_with_its_correlation_id() -> None:
    request = _request()
    out = wire.request_message(request, reply_to="amq.gen-r", correlation_id="c-1")
    incoming = delivered(out.message)
    final = JobEvent.for_request(wire.parse_request(incoming), JobStatus.SUCCEEDED)
    reply = wire.reply_message(final, incoming)
    assert reply.routing_key == "amq.gen-r"
    assert reply.message.correlation_id == "c-1"
    assert orjson.loads(reply.message.body)["v"] == 2
    assert JobEvent.from_json(reply.message.body) == final


def test_a_dead_letter_names_its_job_without_reading_the_image() -> None:
    request = _request()
    message = wire.request_message(request).message
    message.body = b"\x00" * 64  # whatever a producer sent: never decoded here
    info = wire.request_info(delivered(message))
    assert (info.job_id, info.model, info.image_name, info.idempotency_key) == (
        request.job_id,
        request.model,
        request.image_name,
        "order-42",
    )


def test_a_replica_dead_letters_a_request_as_it_came_with_its_reason() -> None:
    request = _request()
    sent = wire.request_message(request, content_type="image/png", reply_to="amq.gen-r").message
    incoming = delivered(sent, routing_key="classify")
    out = wire.dead_letter_message(incoming, "unreadable: 'model' is wrong", user_id="imgq-c")
    assert out.message.body == IMAGE
    assert out.message.message_id == request.job_id
    assert out.message.content_type == "image/png"
    assert out.message.reply_to == "amq.gen-r"
    assert out.message.user_id == "imgq-c"
    assert out.message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    dead = delivered(out.message)
    assert wire.dead_letter_reason(dead) == "unreadable: 'model' is wrong"
    # Its job is still known from it, as from any dead letter.
    assert wire.request_info(dead).job_id == request.job_id
    assert len(wire.dead_letter_message(incoming, "x" * 10_000).message.headers["dead_reason"]) == (
        wire.MAX_REASON_CHARS
    )


def test_a_reason_on_a_request_the_broker_dead_lettered_is_not_a_replicas() -> None:
    message = _with_headers(dead_reason="a producer wrote this")
    message.headers = {**(message.headers or {}), "x-first-death-reason": "delivery_limit"}
    assert wire.dead_letter_reason(delivered(message)) is None
    assert wire.dead_letter_reason(delivered(_with_headers())) is None


def _entries(out: wire.Outgoing) -> list[tuple[wire.LogEntry, Mapping[str, str]]]:
    delivery = wire.LogDelivery.of(delivered(out.message, out.routing_key))
    return list(wire.parse_log_entries(delivery).entries)


def test_log_entries_are_told_apart_by_routing_key() -> None:
    assert _entries(wire.marker_message("abc")) == [(wire.Marker("abc"), {})]
    forgotten = wire.forgotten_message(new_job_id())
    assert forgotten.routing_key == FORGOTTEN_ROUTING_KEY
    ((entry, _),) = _entries(forgotten)
    assert isinstance(entry, JobForgotten)
    event = JobEvent.for_request(_request(), JobStatus.QUEUED)
    out = wire.event_message(event)
    assert out.routing_key == "job.queued"
    assert _entries(out) == [(event, {})]


def test_a_batch_of_events_is_one_message_each_event_with_its_own_trace() -> None:
    first = JobEvent.for_request(_request(), JobStatus.QUEUED)
    second = first.advance(JobStatus.STARTED, started_at=2.0, replica="r")
    trace = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    out = wire.events_message(EventBatch((first, second), ({}, trace)), user_id="gw")
    assert out.routing_key == "job.events"
    assert out.message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert out.message.user_id == "gw"
    assert _entries(out) == [(first, {}), (second, trace)]
    # Each entry is the event as a message of its own would carry it.
    assert orjson.loads(out.message.body)["events"][0] == orjson.loads(first.to_json())


# -- batched acks ----------------------------------------------------------------------------


def _deliveries(channel: RecordingChannel, tags: list[int]) -> list[aio_pika.IncomingMessage]:
    out = wire.request_message(_request())
    return [delivered(out.message, delivery_tag=t, channel=channel) for t in tags]


def test_a_batch_that_is_all_that_is_open_is_acked_with_one_frame() -> None:
    channel = RecordingChannel()
    book = AckBook()
    batch = _deliveries(channel, [1, 2, 3, 4])
    for message in batch:
        book.delivered(message)
    asyncio.run(book.ack_batch(batch))
    assert channel.acks == [(4, True)]
    assert len(book) == 0


def test_an_earlier_open_delivery_forces_single_acks() -> None:
    channel = RecordingChannel()
    book = AckBook()
    waiting, *batch = _deliveries(channel, [1, 2, 3])
    for message in (waiting, *batch):
        book.delivered(message)
    asyncio.run(book.ack_batch(batch))
    # A multiple ack on tag 3 would also have acked tag 1, still waiting in the inbox.
    assert channel.acks == [(2, False), (3, False)]
    assert len(book) == 1
    # Once tag 1 was settled on its own, the rest may go as one frame.
    later = _deliveries(channel, [4, 5])
    for message in later:
        book.delivered(message)
    book.settled(waiting)
    asyncio.run(book.ack_batch(later))
    assert channel.acks[-1] == (5, True)
    assert len(book) == 0


def test_later_deliveries_do_not_stop_a_multiple_ack() -> None:
    channel = RecordingChannel()
    book = AckBook()
    *batch, newer = _deliveries(channel, [1, 2, 3])
    for message in (*batch, newer):
        book.delivered(message)
    asyncio.run(book.ack_batch(batch))
    assert channel.acks == [(2, True)]  # tag 3 is above the batch: untouched
    assert len(book) == 1


@pytest.mark.parametrize(
    ("reply_to", "allowed"),
    [
        ("amq.gen-JzTY20BRgKO-HjmUJj0wLg", True),
        ("amq.rabbitmq.reply-to", True),
        ("amq.rabbitmq.reply-to.g1h2AA", True),
        ("imgq.requests", False),
        ("imgq.events.log", False),
        ("", False),
        (None, False),
    ],
)
def test_replies_go_only_to_a_producers_own_queue(reply_to: str | None, allowed: bool) -> None:
    assert wire.reply_allowed(reply_to) is allowed
