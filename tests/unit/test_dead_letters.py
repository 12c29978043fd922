"""gateway/dead_letters.py and gateway/heartbeats.py with fake deliveries: every notice is
settled, whatever it holds or whatever publishing its event does (no broker, no sleeps)."""

from __future__ import annotations

import asyncio

import aio_pika
import pytest

from gateway.dead_letters import DeadLetters, failed_event
from gateway.heartbeats import Heartbeats
from gateway.metrics import GatewayMetrics
from gateway.replicas import ReplicaRegistry
from shared import wire
from shared.errors import BrokerUnavailable
from shared.messages import BatchRef, JobEvent, ReplicaHeartbeat, new_job_id
from shared.states import JobStatus
from shared.topology import DELIVERY_LIMIT
from tests.fake_log import FakeChannel, notice, request
from tests.wire_helpers import delivered


class Publisher:
    def __init__(self, fails: Exception | None = None) -> None:
        self.fails = fails
        self.events: list[JobEvent] = []

    async def publish_event(self, event: JobEvent) -> None:
        if self.fails is not None:
            raise self.fails
        self.events.append(event)


def _handle(publisher: Publisher, *messages: aio_pika.abc.AbstractIncomingMessage) -> float:
    metrics = GatewayMetrics()
    notices = DeadLetters(publisher, metrics)

    async def consume() -> None:
        for message in messages:
            await notices.on_message(message)

    asyncio.run(consume())
    return metrics.dead_lettered._value.get()


def test_a_notice_becomes_the_jobs_failed_event_and_is_acked() -> None:
    channel = FakeChannel()
    batch = BatchRef(new_job_id(), 0, 1)
    job = request(owner="alice", batch=batch, idempotency_key="k")
    out = wire.request_message(job, user_id="gw")
    publisher = Publisher()
    assert _handle(publisher, notice(out, channel, "delivery_limit")) == 1
    [event] = publisher.events
    assert (event.job_id, event.status, event.model) == (job.job_id, JobStatus.FAILED, job.model)
    assert event.error is not None
    assert event.error.code == "dead_lettered"
    assert f"delivered more than {DELIVERY_LIMIT} times" in event.error.message
    assert (event.owner, event.batch, event.idempotency_key) == ("alice", batch, "k")
    # Who published the request, as RabbitMQ checked it: the log decides what to believe.
    assert event.requested_by == "gw"
    assert channel.settled == [("ack", 1, False)]


def test_a_request_a_replica_dead_lettered_itself_says_the_replicas_reason() -> None:
    channel = FakeChannel()
    job = wire.request_message(request(), user_id="gw")
    # What a replica republishes: the request with its reason, and no x-death (it was not
    # the broker that dead-lettered it).
    given = wire.dead_letter_message(delivered(job.message, "classify"), "it crashed 3 replicas")
    publisher = Publisher()
    _handle(publisher, delivered(given.message, "classify", channel=channel))
    [event] = publisher.events
    assert event.error is not None
    assert event.error.message == "the job was dead-lettered: it crashed 3 replicas"
    assert channel.settled == [("ack", 1, False)]


def test_a_republished_request_names_its_publisher_only_on_a_replicas_word() -> None:
    job = wire.request_message(request(), user_id="imgq-producer")
    # What a replica (connected as imgq-classifier) republishes: its own user_id, and the
    # request's in a header.
    given = wire.dead_letter_message(
        delivered(job.message, "classify"), "unreadable", user_id="imgq-classifier"
    )
    republished = delivered(given.message, "classify", channel=FakeChannel())
    replicas = frozenset({"imgq-classifier"})
    event = failed_event(republished, replicas)
    assert event is not None
    assert event.requested_by == "imgq-producer"
    # The same header from anyone but a replica is not believed.
    forged = wire.dead_letter_message(
        delivered(job.message, "classify"), "unreadable", user_id="imgq-producer"
    )
    forged.message.headers = {**(forged.message.headers or {}), "requested_by": "imgq-gateway"}
    event = failed_event(delivered(forged.message, "classify", channel=FakeChannel()), replicas)
    assert event is not None
    assert event.requested_by == "imgq-producer"


def test_a_notice_of_a_request_without_user_id_says_so() -> None:
    channel = FakeChannel()
    publisher = Publisher()
    _handle(publisher, notice(wire.request_message(request()), channel))
    assert publisher.events[0].requested_by == ""


def test_hostile_notices_are_settled_and_the_next_one_is_handled() -> None:
    channel = FakeChannel()
    good = request()
    hostile_headers = [
        # Passes the digit check, then fails the conversion: not a MessageError.
        {"batch": f"{new_job_id()}/\N{SUPERSCRIPT TWO}/5"},
        {"queued_at_us": "soon", "model": {"nested": [1, 2]}},
        {"v": 2, "model": bytearray(b"\xff\xfe")},
        {"x-first-death-reason": {"a": "table"}},
    ]
    messages = []
    for tag, headers in enumerate(hostile_headers, start=1):
        out = wire.request_message(request(), user_id="producer")
        out.message.headers = {**(out.message.headers or {}), **headers}
        messages.append(delivered(out.message, "classify", delivery_tag=tag, channel=channel))
    nameless = aio_pika.Message(b"junk", message_id="not a job id")
    messages.append(delivered(nameless, "classify", delivery_tag=10, channel=channel))
    messages.append(notice(wire.request_message(good), channel))
    publisher = Publisher()
    _handle(publisher, *messages)
    # Each was settled exactly once; the good one's failed event went out.
    assert sorted(tag for _, tag, _ in channel.settled) == [1, 1, 2, 3, 4, 10]
    assert all(not requeue for _, _, requeue in channel.settled)
    assert good.job_id in {event.job_id for event in publisher.events}


def test_a_notice_whose_event_the_broker_did_not_take_is_requeued() -> None:
    channel = FakeChannel()
    out = wire.request_message(request())
    _handle(Publisher(BrokerUnavailable("not connected")), notice(out, channel))
    assert channel.settled == [("nack", 1, True)]


def test_a_notice_whose_event_cannot_be_published_at_all_is_rejected() -> None:
    channel = FakeChannel()
    out = wire.request_message(request())
    _handle(Publisher(ValueError("a bug")), notice(out, channel))
    assert channel.settled == [("reject", 1, False)]


def test_a_closed_channel_does_not_stop_the_notices() -> None:
    publisher = Publisher()
    first, second = request(), request()
    channel = FakeChannel(closed=True)
    _handle(
        publisher,
        notice(wire.request_message(first), channel),
        notice(wire.request_message(second), channel),
    )
    assert [event.job_id for event in publisher.events] == [first.job_id, second.job_id]


@pytest.mark.parametrize(
    "body", [b"", b"not json", b'{"v": 2}', b'{"v": 2, "replica": "r", "models": [1]}']
)
def test_a_bad_heartbeat_is_skipped_and_the_next_recorded(body: bytes) -> None:
    registry = ReplicaRegistry()
    beats = Heartbeats(registry)
    good = ReplicaHeartbeat("replica-1", ("efficientnet_lite0",), 0, False, 5.0, 1e12)

    async def consume() -> None:
        await beats.on_message(delivered(aio_pika.Message(body), "replica.heartbeat"))
        await beats.on_message(delivered(wire.heartbeat_message(good).message, "replica.heartbeat"))

    asyncio.run(consume())
    assert [beat.replica for beat in registry.online()] == ["replica-1"]
