"""Property tests: every wire parser returns a value or raises ``MessageError``, nothing else.

A consumer settles a bad message by catching ``MessageError``; any other exception out of a
parser is a bug that, before the consumers were guarded, stopped a replica for good.  So the
parsers are fed what a hostile or broken producer could send: arbitrary header names, types
and values (Unicode digits, huge integers, nested tables, bytes, empty strings), arbitrary
message IDs and bodies, and well-formed messages with one part changed, so that every check
deep inside a parser is reached, not only the first.
"""

from __future__ import annotations

import base64
import datetime
import decimal
from dataclasses import dataclass
from typing import Any, cast

import aio_pika
import orjson
from aio_pika.abc import AbstractIncomingMessage
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from shared import wire
from shared.errors import MessageError
from shared.messages import (
    BatchRef,
    ClassifyRequest,
    CrashReport,
    JobEvent,
    JobForgotten,
    ReplicaHeartbeat,
    RequestInfo,
    new_job_id,
)
from shared.states import JobStatus
from tests.wire_helpers import delivered

# Digits that str.isdigit() accepts: some int() takes (Arabic-Indic, fullwidth), some it
# refuses (superscripts, circled digits), and none is an ASCII digit.
ODD_DIGITS = "١٢٣٤٥٦٧٨٩٠０１２９²³¹①⑨߁൧᠑𝟗"
odd_numbers = st.text(alphabet=ODD_DIGITS + "0123456789/-+. _e", min_size=0, max_size=12)
texts = st.text(max_size=40) | odd_numbers | st.sampled_from(["", " ", "\x00", "🙂" * 3])

scalars = (
    st.none()
    | st.booleans()
    | st.integers()  # unbounded: far past 64 bits
    | st.floats()  # NaN and the infinities included
    | texts
    | st.binary(max_size=40)
    | st.decimals(allow_nan=True)
    | st.datetimes(timezones=st.none() | st.just(datetime.UTC))
)
header_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=12,
)
KNOWN_HEADERS = [
    wire.H_VERSION,
    wire.H_MODEL,
    wire.H_IMAGE_NAME,
    wire.H_QUEUED_AT_US,
    wire.H_IDEMPOTENCY_KEY,
    wire.H_OWNER,
    wire.H_BATCH,
    wire.H_DEAD_REASON,
    "traceparent",
    "tracestate",
    "x-first-death-reason",
]
header_names = st.sampled_from(KNOWN_HEADERS) | texts
message_ids = st.none() | texts | st.just(new_job_id()) | st.integers() | st.binary(max_size=8)
bodies = st.binary(max_size=200) | st.sampled_from([b"", b"{}", b"[]", b"null", b"\xff\xd8"])


@dataclass
class Incoming:
    """What the parsers read of a delivery, with any Python value where pamqp would never put
    one (the parsers must not rely on the decoder's types to stay safe)."""

    headers: Any
    body: bytes
    message_id: Any = None
    routing_key: Any = "classify"
    reply_to: Any = None
    correlation_id: Any = None
    redelivered: bool = False
    user_id: Any = None


def _message(incoming: Incoming) -> AbstractIncomingMessage:
    return cast(AbstractIncomingMessage, incoming)


def _good_headers() -> dict[str, Any]:
    return {
        wire.H_VERSION: 2,
        wire.H_MODEL: "efficientnet_lite0",
        wire.H_IMAGE_NAME: "cat.jpg",
        wire.H_QUEUED_AT_US: 1_700_000_000_000_000,
        wire.H_IDEMPOTENCY_KEY: "order-1",
        wire.H_OWNER: "abc",
        wire.H_BATCH: f"{new_job_id()}/0/2",
    }


@st.composite
def v2_requests(draw: st.DrawFn) -> Incoming:
    """A well-formed version 2 request with a few headers changed, added or removed."""
    headers = _good_headers()
    for _ in range(draw(st.integers(0, 3))):
        name = draw(header_names)
        if draw(st.booleans()):
            headers[name] = draw(header_values)
        else:
            headers.pop(name, None)
    if draw(st.booleans()):
        headers[wire.H_VERSION] = 2
    body = draw(st.just(b"\xff\xd8\xff image bytes") | bodies)
    return Incoming(headers, body, draw(st.just(new_job_id()) | message_ids))


def _good_v1() -> dict[str, Any]:
    return {
        "v": 1,
        "job_id": new_job_id(),
        "model": "efficientnet_lite0",
        "image_name": "cat.jpg",
        "image_b64": base64.b64encode(b"\xff\xd8 image").decode(),
        "queued_at": 1.5,
    }


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | texts,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=12,
)


@st.composite
def mutated_json(draw: st.DrawFn, good: dict[str, Any]) -> bytes:
    """``good`` as JSON with a few fields changed, added or removed, or not JSON at all."""
    data = dict(good)
    for _ in range(draw(st.integers(0, 3))):
        key = draw(st.sampled_from(sorted(data)) | texts)
        if draw(st.booleans()):
            data[key] = draw(json_values)
        else:
            data.pop(key, None)
    if draw(st.integers(0, 9)) == 0:
        return draw(bodies)
    return orjson.dumps(data)


def _event() -> dict[str, Any]:
    request = ClassifyRequest(new_job_id(), "m", "cat.jpg", 1.0, image=b"x")
    event = JobEvent.for_request(request, JobStatus.QUEUED).advance(JobStatus.SUCCEEDED)
    data: dict[str, Any] = orjson.loads(event.to_json())
    data["result"] = [{"label": "tabby", "class_index": 281, "score": 0.5}]
    data["error"] = {"code": "x", "message": "y"}
    data["batch"] = f"{new_job_id()}/1/3"
    return data


def _heartbeat() -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads(
        ReplicaHeartbeat("r1", ("m",), 3, True, 5.0, 10.0, stalled=True).to_json()
    )
    data["model_info"] = {"m@1": {"title": "M", "input_size": 224, "name": "m", "version": "1"}}
    return data


def _crash_report() -> dict[str, Any]:
    report = CrashReport("r1", "life-1", (new_job_id(), new_job_id()), 10.0)
    data: dict[str, Any] = orjson.loads(report.to_json())
    return data


SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(v2_requests())
@example(Incoming({**_good_headers(), wire.H_BATCH: f"{new_job_id()}/²/3"}, b"x", new_job_id()))
@example(Incoming({**_good_headers(), wire.H_BATCH: f"{new_job_id()}/١/٣"}, b"x", new_job_id()))
@example(Incoming({**_good_headers(), wire.H_QUEUED_AT_US: 10**400}, b"x", new_job_id()))
@example(Incoming({**_good_headers(), wire.H_VERSION: 10**400}, b"x", new_job_id()))
@example(Incoming({**_good_headers(), wire.H_MODEL: b"\xff"}, b"x", new_job_id()))
@example(Incoming({**_good_headers(), wire.H_IMAGE_NAME: {"a": [1]}}, b"x", new_job_id()))
def test_a_v2_request_parses_or_is_a_message_error(incoming: Incoming) -> None:
    _parses_or_message_error(incoming)


@SETTINGS
@given(st.dictionaries(header_names, header_values, max_size=6) | st.none(), message_ids, bodies)
def test_any_headers_and_body_parse_or_are_a_message_error(
    headers: Any, message_id: Any, body: bytes
) -> None:
    _parses_or_message_error(Incoming(headers, body, message_id))


@SETTINGS
@given(mutated_json(_good_v1()), message_ids)
@example(orjson.dumps({**_good_v1(), "v": [1]}), None)
@example(orjson.dumps({**_good_v1(), "v": {"a": 1}}), None)
@example(orjson.dumps({**_good_v1(), "image_b64": "é"}), None)
@example(orjson.dumps({**_good_v1(), "queued_at": 2**64 - 1}), None)
@example(b'{"v": 1, "queued_at": 1e400}', None)
def test_a_json_request_of_the_old_version_1_is_a_message_error(
    body: bytes, message_id: Any
) -> None:
    _parses_or_message_error(Incoming({}, body, message_id))


def _parses_or_message_error(incoming: Incoming) -> None:
    for parse in (wire.parse_request, wire.request_info):
        try:
            parsed = parse(_message(incoming))
        except MessageError:
            continue
        assert isinstance(parsed, ClassifyRequest | RequestInfo)
        if isinstance(parsed, ClassifyRequest):
            # What a replica sends about an accepted request can always be built.
            started = JobEvent.for_request(parsed, JobStatus.STARTED)
            assert JobEvent.from_json(wire.event_message(started).message.body) == started
    # Never fails at all: a malformed context costs only the trace.
    assert isinstance(wire.trace_headers(_message(incoming)), dict)
    reason = wire.dead_letter_reason(_message(incoming))
    assert reason is None or isinstance(reason, str)


@SETTINGS
@given(
    st.dictionaries(header_names, header_values, max_size=6),
    st.just(new_job_id()) | message_ids,
    bodies,
)
def test_what_pamqp_can_carry_parses_or_is_a_message_error(
    headers: dict[str, Any], message_id: Any, body: bytes
) -> None:
    """The same through pamqp's real encoding, with the types a consumer really gets."""
    try:
        message = aio_pika.Message(body, headers=headers, message_id=message_id)
        incoming = delivered(message)
    except Exception:  # pamqp cannot encode it: no broker would deliver it either
        return
    _parses_or_message_error(cast(Incoming, incoming))


@SETTINGS
@given(mutated_json(_event()), st.sampled_from(["job.succeeded", "job.forgotten", "marker.x", ""]))
@example(orjson.dumps({**_event(), "batch": f"{new_job_id()}/²/3"}), "job.failed")
@example(orjson.dumps({**_event(), "result": [{"label": 1, "class_index": "1" * 5000}]}), "job.x")
@example(orjson.dumps({**_event(), "status": ["queued"]}), "job.queued")
def test_log_entries_parse_or_are_a_message_error(body: bytes, routing_key: str) -> None:
    delivery = wire.LogDelivery.of(_message(Incoming({}, body, routing_key=routing_key)))
    try:
        read = wire.parse_log_entries(delivery)
    except MessageError:
        return
    ((entry, _),) = read.entries
    assert isinstance(entry, wire.Marker | JobForgotten | JobEvent)


@SETTINGS
@given(
    st.lists(mutated_json(_event()), max_size=4),
    st.sampled_from([2, 1, 99, "2", None, [2]]),
    st.sampled_from([None, {}, [], "x", {"x-stream-offset": "7"}]),
)
@example([orjson.dumps({**_event(), "traceparent": 7})], 2, {})
def test_a_batch_of_events_parses_entry_by_entry_or_is_a_message_error(
    entries: list[bytes], version: Any, headers: Any
) -> None:
    """A bad entry costs only itself: the others are read, and it is said why it was not."""
    events: list[Any] = []
    for raw in entries:
        try:
            events.append(orjson.loads(raw))
        except orjson.JSONDecodeError:
            events.append(raw.decode(errors="replace"))
    body = orjson.dumps({"v": version, "events": events})
    delivery = wire.LogDelivery.of(_message(Incoming(headers, body, routing_key="job.events")))
    assert delivery.offset is None
    try:
        read = wire.parse_log_entries(delivery)
    except MessageError:
        return
    assert len(read.entries) + len(read.skipped) == len(events)
    for entry, trace in read.entries:
        assert isinstance(entry, JobEvent)
        assert all(isinstance(value, str) for value in trace.values())


@SETTINGS
@given(mutated_json(_heartbeat()))
@example(orjson.dumps({**_heartbeat(), "model_info": {"m": {"title": "M", "input_size": 1}}}))
def test_heartbeats_parse_or_are_a_message_error(body: bytes) -> None:
    try:
        beat = wire.parse_heartbeat(_message(Incoming({}, body)))
    except MessageError:
        return
    assert isinstance(beat, ReplicaHeartbeat)


@SETTINGS
@given(mutated_json({"v": 2, "job_id": new_job_id(), "at": 1.0}))
def test_forgotten_jobs_parse_or_are_a_message_error(body: bytes) -> None:
    try:
        forgotten = JobForgotten.from_json(body)
    except MessageError:
        return
    assert isinstance(forgotten, JobForgotten)


@SETTINGS
@given(mutated_json(_crash_report()))
def test_crash_reports_parse_or_are_a_message_error(body: bytes) -> None:
    try:
        report = wire.parse_crash_report(_message(Incoming({}, body)))
    except MessageError:
        return
    assert isinstance(report, CrashReport)
    assert all(isinstance(job_id, str) for job_id in report.jobs)


@SETTINGS
@given(header_values | st.from_regex(r"[0-9a-f]{32}/[0-9]{1,7}/[0-9]{1,7}", fullmatch=True))
@example(f"{new_job_id()}/1/2")
@example(f"{new_job_id()}/²/3")
@example(f"{new_job_id()}/0/３")
@example(decimal.Decimal("NaN"))
def test_a_batch_reference_parses_or_is_a_message_error(raw: Any) -> None:
    try:
        ref = BatchRef.parse(raw)
    except MessageError:
        return
    if ref is not None:
        assert 0 <= ref.index < ref.size
        assert BatchRef.parse(str(ref)) == ref
