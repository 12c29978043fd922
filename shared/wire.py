"""Every broker message imgq sends or reads, built and parsed here and nowhere else.

A classification request (schema version 2) is the image itself: the AMQP body is the
encoded image bytes, untouched, and everything else rides in the message properties
(``message_id`` = job ID, ``type``, ``timestamp``, ``reply_to``, ``correlation_id``) and a
few headers.  No base64, no JSON around megabytes of pixels: a producer writes the file's
bytes, the broker stores them once, and a replica hands them straight to the decoder.

Events, heartbeats and the other small messages stay JSON bodies (``shared/messages.py``).
Replicas send a job's events in ``job.events`` messages, several events (of a batch, and of the
next batch) to one message; a gateway sends its "queued" events likewise, and its other events
one to a message under ``job.<status>``.  Readers of the log take both (``parse_log_entries``).

Requests and job events also carry the W3C trace context of the span that sent them
(``traceparent``/``tracestate`` headers) while tracing is on (``shared/tracing.py``); a
message without them simply starts no trace, so either side may run without tracing.

Each builder returns an ``Outgoing``: the message and the routing key it goes out with,
so routing keys are spelled only in ``shared/topology.py`` and used only here.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, HeadersType
from aiormq.abc import DeliveredMessage

from shared import tracing
from shared.errors import MessageError
from shared.messages import (
    JSON,
    MAX_CALLBACK_CHARS,
    SCHEMA_VERSION,
    BatchRecord,
    BatchRef,
    ClassifyRequest,
    CrashReport,
    EventBatch,
    JobEvent,
    JobForgotten,
    ReplicaHeartbeat,
    RequestInfo,
    WebhookDelivery,
    checked_job_id,
    checked_name,
    is_job_id,
)
from shared.topology import (
    BATCH_ROUTING_KEY,
    CRASHED_ROUTING_KEY,
    EVENTS_ROUTING_KEY,
    FORGOTTEN_ROUTING_KEY,
    HEARTBEAT_ROUTING_KEY,
    REQUEST_ROUTING_KEY,
    WEBHOOK_DUE,
    WEBHOOK_HEADER,
    job_routing_key,
    marker_routing_key,
    webhook_delay_queue,
)

REQUEST_TYPE: Final = "classify.request"
# Headers of a version 2 request.  Times are integer microseconds: AMQP field tables encode a
# Python float as a 32-bit float (pamqp), which would move a Unix time by minutes.
H_VERSION: Final = "v"
H_MODEL: Final = "model"
H_IMAGE_NAME: Final = "image_name"
H_QUEUED_AT_US: Final = "queued_at_us"
H_IDEMPOTENCY_KEY: Final = "idempotency_key"
H_OWNER: Final = "owner"
H_BATCH: Final = "batch"
# Set by a replica that dead-letters a request itself (republished to the dead-letter exchange,
# then acked): why, in words.  A request the broker dead-lettered has its x-death headers
# instead (x-first-death-reason: delivery_limit, rejected, ...).
H_DEAD_REASON: Final = "dead_reason"
# ... and who published the request it dead-letters (the request's own ``user_id``, which the
# republished message cannot carry: RabbitMQ takes only the replica's own user there).
H_REQUESTED_BY: Final = "requested_by"
# Microseconds since 1970 stay below 2**53 until the year 2255: anything larger is no time.
_MAX_TIME_US: Final = 2**53
H_CALLBACK: Final = "callback"
# The content type of a request whose producer did not say what the image is; replicas
# judge the format from the bytes either way.
OCTET_STREAM: Final = "application/octet-stream"
# A heartbeat older than this is useless: let the broker drop it rather than deliver it late.
HEARTBEAT_TTL_SECONDS: Final = 30


@dataclass(frozen=True, slots=True)
class Outgoing:
    message: aio_pika.Message
    routing_key: str


# -- requests ------------------------------------------------------------------------------


def request_message(
    request: ClassifyRequest,
    *,
    content_type: str = OCTET_STREAM,
    reply_to: str | None = None,
    correlation_id: str | None = None,
    user_id: str | None = None,
) -> Outgoing:
    """A version 2 request: persistent (the work queue is durable), image bytes as the body.

    ``user_id`` (here and in every builder) is the broker user the sender is connected as:
    RabbitMQ refuses a message whose user_id is not the connection's user, so a reader can
    tell who sent it (``gateway/senders.py``)."""
    headers: HeadersType = {
        H_VERSION: SCHEMA_VERSION,
        H_MODEL: request.model,
        H_IMAGE_NAME: request.image_name,
        H_QUEUED_AT_US: round(request.queued_at * 1_000_000),
        **tracing.outgoing_headers(),
    }
    if request.idempotency_key is not None:
        headers[H_IDEMPOTENCY_KEY] = request.idempotency_key
    if request.owner is not None:
        headers[H_OWNER] = request.owner
    if request.batch is not None:
        headers[H_BATCH] = str(request.batch)
    if request.callback is not None:
        headers[H_CALLBACK] = request.callback
    message = aio_pika.Message(
        request.image,
        content_type=content_type,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=request.job_id,
        type=REQUEST_TYPE,
        timestamp=request.queued_at,
        headers=headers,
        reply_to=reply_to,
        correlation_id=correlation_id,
        user_id=user_id,
    )
    return Outgoing(message, REQUEST_ROUTING_KEY)


def _header_str(headers: HeadersType, key: str) -> str | None:
    value = headers.get(key)
    if isinstance(value, bytes):  # pamqp hands back bytes for a long string it cannot decode
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise MessageError(f"header {key!r} is not UTF-8") from None
    if value is None or isinstance(value, str):
        return value
    raise MessageError(f"header {key!r} must be a string")


def _trace_context() -> HeadersType | None:
    """The sending span's context (shared/tracing.py), as headers; None when there is none."""
    return {**tracing.outgoing_headers()} or None


def trace_headers(message: AbstractIncomingMessage) -> dict[str, str]:
    """The trace context a message carries, for ``shared.tracing``; empty if none.  Never
    fails: a malformed context only costs the trace its parent, never the job."""
    return _carried_trace(message.headers)


def _carried_trace(headers: HeadersType | None) -> dict[str, str]:
    if not headers:
        return {}
    carried: dict[str, str] = {}
    # The W3C names (traceparent, tracestate), in AMQP headers as in HTTP's.
    for key in tracing.CONTEXT_HEADERS:
        try:
            value = _header_str(headers, key)
        except MessageError:
            value = None
        if value:
            carried[key] = value
    return carried


def request_info(message: AbstractIncomingMessage) -> RequestInfo:
    """The job's metadata, from the properties and headers: the body is never read."""
    headers = message.headers or {}
    version = headers.get(H_VERSION)
    if type(version) is not int or version != SCHEMA_VERSION:
        raise MessageError(
            f"header {H_VERSION!r} must be the schema version {SCHEMA_VERSION}, got {version!r}: "
            "a request is the image bytes as the body with its metadata in headers (docs/amqp.md)"
        )
    if not is_job_id(message.message_id):
        raise MessageError("the message_id property must be the job ID (32 lowercase hex)")
    queued_at_us = headers.get(H_QUEUED_AT_US)
    if (
        isinstance(queued_at_us, bool)
        or not isinstance(queued_at_us, int)
        or abs(queued_at_us) > _MAX_TIME_US
    ):
        raise MessageError(
            f"header {H_QUEUED_AT_US!r} must be an integer (microseconds since 1970)"
        )
    key = _header_str(headers, H_IDEMPOTENCY_KEY)
    return RequestInfo(
        job_id=checked_job_id(message.message_id),
        model=checked_name(_header_str(headers, H_MODEL), H_MODEL),
        image_name=checked_name(_header_str(headers, H_IMAGE_NAME), H_IMAGE_NAME),
        queued_at=queued_at_us / 1_000_000,
        idempotency_key=key or None,
        owner=_header_str(headers, H_OWNER) or None,
        batch=BatchRef.parse(_header_str(headers, H_BATCH)),
        requested_by=message.user_id,
        callback=_callback(headers),
    )


def _callback(headers: HeadersType) -> str | None:
    callback = _header_str(headers, H_CALLBACK) or None
    if callback is not None and len(callback) > MAX_CALLBACK_CHARS:
        raise MessageError(f"header {H_CALLBACK!r} has more than {MAX_CALLBACK_CHARS} characters")
    return callback


def parse_request(message: AbstractIncomingMessage) -> ClassifyRequest:
    """A request; ``MessageError`` says what is wrong with a bad one."""
    info = request_info(message)
    if not message.body:
        raise MessageError("the message body must be the image bytes; it is empty")
    return ClassifyRequest.of(info, message.body)


# -- dead letters ----------------------------------------------------------------------------

# The properties a dead letter keeps from its request: all but expiration (it would expire in
# the dead-letter queue, which has its own age limit) and user_id (the broker refuses a message
# whose user_id is not the sender's own user: the replica's, now).
_KEPT_PROPERTIES: Final = (
    "content_type",
    "content_encoding",
    "priority",
    "correlation_id",
    "reply_to",
    "message_id",
    "timestamp",
    "type",
    "app_id",
)
# A reason is a sentence; a header is no place for an essay (an exception's repr may be long).
MAX_REASON_CHARS: Final = 500


def dead_letter_message(
    request: AbstractIncomingMessage, reason: str, *, user_id: str | None = None
) -> Outgoing:
    """A request a replica dead-letters itself, for the dead-letter exchange: the request as it
    came (body, headers, properties) with ``reason`` in its ``dead_reason`` header.

    RabbitMQ's own dead-lettering (reject without requeue) keeps the headers but cannot add
    one, so an operator reading the dead-letter queue would see only "rejected"; republishing
    the request there, confirmed, before acking it keeps the reason with the message."""
    properties = {name: getattr(request, name, None) for name in _KEPT_PROPERTIES}
    headers: HeadersType = dict(request.headers or {})
    headers[H_DEAD_REASON] = reason[:MAX_REASON_CHARS]
    headers[H_REQUESTED_BY] = request.user_id or ""
    message = aio_pika.Message(
        request.body,
        headers=headers,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        user_id=user_id,
        **properties,
    )
    return Outgoing(message, request.routing_key or "")


def dead_letter_requested_by(message: AbstractIncomingMessage, replicas: frozenset[str]) -> str:
    """Who published a dead-lettered request ("" when it named nobody).  One the broker
    dead-lettered keeps the request's own ``user_id``.  One a replica republished carries the
    replica's user, and the request's in a header, believed only from a replica: one of the
    ``replicas`` users (any sender when that is empty, as with the sender checks off).  Never
    fails."""
    headers = message.headers or {}
    republished = "x-first-death-reason" not in headers and "x-death" not in headers
    if republished and (not replicas or message.user_id in replicas):
        try:
            return _header_str(headers, H_REQUESTED_BY) or ""
        except MessageError:
            return ""
    return message.user_id or ""


def dead_letter_reason(message: AbstractIncomingMessage) -> str | None:
    """Why a replica dead-lettered this request, or None: the broker dead-lettered it (its
    ``x-first-death-reason`` says why), or no replica gave a reason.  Never fails."""
    headers = message.headers or {}
    if "x-first-death-reason" in headers or "x-death" in headers:
        return None  # the header, if any, was the producer's, not a replica's
    try:
        return _header_str(headers, H_DEAD_REASON) or None
    except MessageError:
        return None


# -- events --------------------------------------------------------------------------------


def event_message(event: JobEvent, *, user_id: str | None = None) -> Outgoing:
    """A job event for the events exchange (and so the event log): persistent JSON.

    The final event of a job with a callback is marked for the webhooks exchange, which gives
    the gateways a copy to deliver (shared/topology.py): whoever publishes it, replica or
    gateway, decides nothing more."""
    headers = _trace_context()
    if event.callback is not None and event.status.is_final:
        headers = {**(headers or {}), WEBHOOK_HEADER: WEBHOOK_DUE}
    message = aio_pika.Message(
        event.to_json(),
        content_type=JSON,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=event.job_id,
        timestamp=time.time(),
        type=job_routing_key(event.status.value),
        user_id=user_id,
        headers=headers,
    )
    return Outgoing(message, job_routing_key(event.status.value))


def events_message(batch: EventBatch, *, user_id: str | None = None) -> Outgoing:
    """Several job events in one message for the events exchange (and so the event log):
    persistent JSON, each event with its own trace context in the body (``EventBatch``)."""
    message = aio_pika.Message(
        batch.to_json(),
        content_type=JSON,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        timestamp=time.time(),
        type=EVENTS_ROUTING_KEY,
        user_id=user_id,
    )
    return Outgoing(message, EVENTS_ROUTING_KEY)


# -- callbacks -----------------------------------------------------------------------------

WEBHOOK_TYPE: Final = "webhook.delivery"

# What the webhooks' due queue holds: a job's final event (its first attempt), or a delivery
# back from a delay queue (a later one).
WebhookDue = JobEvent | WebhookDelivery


def webhook_retry_message(
    delivery: WebhookDelivery, delay: float, *, user_id: str | None = None
) -> Outgoing:
    """``delivery``, to wait ``delay`` seconds in its delay queue and then come back due:
    marked like a final event for the webhooks exchange, which it returns through."""
    message = aio_pika.Message(
        delivery.to_json(),
        content_type=JSON,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=delivery.delivery_id,
        type=WEBHOOK_TYPE,
        user_id=user_id,
        headers={WEBHOOK_HEADER: WEBHOOK_DUE},
    )
    return Outgoing(message, webhook_delay_queue(delay))


def parse_webhook(message: AbstractIncomingMessage) -> WebhookDue:
    """A message of the webhooks' due queue."""
    if message.type == WEBHOOK_TYPE:
        return WebhookDelivery.from_json(message.body)
    return JobEvent.from_json(message.body)


# Replies go only to a producer's own server-named queue or to RabbitMQ's direct reply-to:
# a reply_to naming any other queue (the work queue, the event log stream) would let a
# producer make a replica write into the service's own queues.
REPLY_QUEUE_PREFIXES: Final = ("amq.gen-", "amq.rabbitmq.reply-to")


def reply_allowed(reply_to: str | None) -> bool:
    return bool(reply_to) and str(reply_to).startswith(REPLY_QUEUE_PREFIXES)


def reply_message(
    event: JobEvent, request: AbstractIncomingMessage, *, user_id: str | None = None
) -> Outgoing:
    """The final event for the producer's ``reply_to`` queue."""
    assert reply_allowed(request.reply_to), "check reply_allowed() first"
    assert request.reply_to is not None
    message = aio_pika.Message(
        event.to_json(),
        content_type=JSON,
        correlation_id=request.correlation_id or event.job_id,
        message_id=event.job_id,
        type=job_routing_key(event.status.value),
        user_id=user_id,
        headers=_trace_context(),
    )
    return Outgoing(message, request.reply_to)


def batch_message(record: BatchRecord, *, user_id: str | None = None) -> Outgoing:
    """A batch record for the events exchange (and so the event log): persistent JSON."""
    message = aio_pika.Message(
        record.to_json(),
        content_type=JSON,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=record.batch_id,
        user_id=user_id,
    )
    return Outgoing(message, BATCH_ROUTING_KEY)


def forgotten_message(job_id: str, *, user_id: str | None = None) -> Outgoing:
    message = aio_pika.Message(
        JobForgotten(job_id, time.time()).to_json(),
        content_type=JSON,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=job_id,
        user_id=user_id,
    )
    return Outgoing(message, FORGOTTEN_ROUTING_KEY)


def heartbeat_message(beat: ReplicaHeartbeat, *, user_id: str | None = None) -> Outgoing:
    message = aio_pika.Message(
        beat.to_json(), content_type=JSON, expiration=HEARTBEAT_TTL_SECONDS, user_id=user_id
    )
    return Outgoing(message, HEARTBEAT_ROUTING_KEY)


def parse_heartbeat(message: AbstractIncomingMessage) -> ReplicaHeartbeat:
    return ReplicaHeartbeat.from_json(message.body)


def crash_report_message(report: CrashReport, *, user_id: str | None = None) -> Outgoing:
    """For the cancellations stream, which every replica follows (``shared/topology.py``)."""
    message = aio_pika.Message(
        report.to_json(),
        content_type=JSON,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        timestamp=time.time(),
        user_id=user_id,
    )
    return Outgoing(message, CRASHED_ROUTING_KEY)


def parse_crash_report(message: AbstractIncomingMessage) -> CrashReport:
    return CrashReport.from_json(message.body)


def marker_message(marker: str, *, user_id: str | None = None) -> Outgoing:
    """A gateway's marker in the event log: reading it back means the replay caught up."""
    return Outgoing(
        aio_pika.Message(marker.encode(), content_type="text/plain", user_id=user_id),
        marker_routing_key(marker),
    )


@dataclass(frozen=True, slots=True)
class Marker:
    value: str


LogEntry = Marker | JobForgotten | BatchRecord | JobEvent


@dataclass(frozen=True, slots=True)
class LogDelivery:
    """What a reader of the event log needs of one delivered message, whichever client
    library delivered it: aio-pika's ``IncomingMessage`` or aiormq's bare ``DeliveredMessage``
    (the gateway's log consumer takes the latter: it is most of a log entry's cost)."""

    routing_key: str
    body: bytes
    user_id: str | None
    headers: HeadersType

    @property
    def offset(self) -> int | None:
        """Its offset in the stream (``x-stream-offset``), if it says."""
        offset = self.headers.get("x-stream-offset")
        return offset if isinstance(offset, int) and not isinstance(offset, bool) else None

    @classmethod
    def of(cls, message: DeliveredMessage | AbstractIncomingMessage) -> LogDelivery:
        if isinstance(message, DeliveredMessage):
            properties = message.header.properties
            user_id, headers = properties.user_id, properties.headers
        else:
            user_id, headers = message.user_id, message.headers
        return cls(
            message.routing_key or "",
            message.body,
            user_id if isinstance(user_id, str) else None,
            headers if isinstance(headers, dict) else {},
        )


@dataclass(frozen=True, slots=True)
class LogEntries:
    """What one message of the log holds: its entries in order, each with the trace context
    it carries (empty: none), and why any event of a batch was left out."""

    entries: tuple[tuple[LogEntry, Mapping[str, str]], ...]
    skipped: tuple[str, ...] = ()


_NO_TRACE: Mapping[str, str] = {}


def parse_log_entries(delivery: LogDelivery) -> LogEntries:
    """The entries of one message of the event log: a marker, a forgotten job, a batch record,
    a job event, or a batch of job events.  ``MessageError`` when the message as a whole is
    unreadable; an unreadable event inside a batch is only skipped (``LogEntries.skipped``)."""
    routing_key = delivery.routing_key
    if routing_key == EVENTS_ROUTING_KEY:
        batch = EventBatch.from_json(delivery.body)
        return LogEntries(tuple(zip(batch.events, batch.traces, strict=True)), batch.skipped)
    entry: LogEntry
    trace = _NO_TRACE
    if is_marker(routing_key):
        entry = Marker(delivery.body.decode(errors="replace"))
    elif routing_key == FORGOTTEN_ROUTING_KEY:
        entry = JobForgotten.from_json(delivery.body)
    elif routing_key == BATCH_ROUTING_KEY:
        entry = BatchRecord.from_json(delivery.body)
    else:
        entry = JobEvent.from_json(delivery.body)
        trace = _carried_trace(delivery.headers)
    return LogEntries(((entry, trace),))


def is_marker(routing_key: str) -> bool:
    return routing_key.startswith(marker_routing_key(""))
