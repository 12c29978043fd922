"""gateway/webhooks.py and its pieces without a broker: who may ask for a callback, what is
POSTed, the retry schedule, which gateway sends a batch's callback, and how the consumer
settles each message.  The event log is read by the real follower from fake deliveries
(tests/fake_log.py); attempts go to a stand-in poster.  On the real service:
tests/service/test_webhooks_service.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Iterable
from dataclasses import replace
from typing import Any, TypeVar

import orjson
import pytest

from gateway import webhooks as webhooks_module
from gateway.answers import job_answer
from gateway.batch_ends import BatchEnds
from gateway.batch_store import Batches
from gateway.clients import owner_of
from gateway.log_follower import LogFollower
from gateway.metrics import GatewayMetrics
from gateway.senders import Senders
from gateway.store import JobStore
from gateway.webhook_consumer import RetryRefused, WebhookConsumer
from gateway.webhook_http import Attempt
from gateway.webhook_payloads import delivery_id
from gateway.webhook_signing import WebhookSecrets, secret_for_token
from gateway.webhooks import Outcome, Retry, Settle, Webhooks
from shared import wire
from shared.errors import BrokerUnavailable, MessageError, SettingsError
from shared.messages import (
    MAX_CALLBACK_CHARS,
    BatchRef,
    JobEvent,
    JobFailure,
    Label,
    WebhookDelivery,
    new_job_id,
)
from shared.states import JobStatus
from shared.topology import (
    WEBHOOK_DELIVERY_LIMIT,
    WEBHOOK_HEADER,
    WEBHOOKS_EXCHANGE,
    Replication,
    WebhookRetries,
    webhook_delay_queue,
)
from tests.fake_log import FakeChannel, FakeLog, queued
from tests.wire_helpers import delivered

ENFORCED = Senders(gateways=frozenset({"gw"}), classifiers=frozenset({"cl"}))
URL = "https://93.184.216.34/hooks/imgq"
ALICE = owner_of(b"alice")
RETRIES = WebhookRetries((1.0, 5.0))

T = TypeVar("T")


def run(awaitable: Awaitable[T]) -> T:
    async def main() -> T:
        return await awaitable

    return asyncio.run(main())


class Poster:
    """Answers each attempt as told (then: delivered), and keeps what it was asked."""

    def __init__(self, answers: Iterable[Attempt] = ()) -> None:
        self.answers = list(answers)
        self.posted: list[tuple[WebhookDelivery, str]] = []

    async def post(self, delivery: WebhookDelivery, secret: str) -> Attempt:
        self.posted.append((delivery, secret))
        return self.answers.pop(0) if self.answers else Attempt(True)


class Gateway:
    """One gateway's store, batches and log follower (session as broker user "gw"), and its
    Webhooks with a stand-in poster."""

    def __init__(
        self,
        senders: Senders = ENFORCED,
        answers: Iterable[Attempt] = (),
        tokens: tuple[str, ...] = ("alice",),
        secret: str | None = None,
    ) -> None:
        self.store = JobStore(ttl=600, max_jobs=1000)
        self.batches = Batches(self.store)
        self.follower = LogFollower(self.store, self.batches, senders)
        self.follower.begin(new_job_id(), "gw")
        self.metrics = GatewayMetrics()
        self.poster = Poster(answers)
        self.webhooks = Webhooks(
            self.store,
            self.batches,
            self.follower.batch_ends,
            senders,
            WebhookSecrets(tokens, secret),
            self.poster,
            RETRIES,
            self.metrics,
        )

    async def read(self, *entries: Any) -> None:
        for entry in entries:
            self.follower.take(wire.LogDelivery.of(entry))

    def handle(self, due: wire.WebhookDue, sender: str | None) -> Outcome:
        return run(self.webhooks.handle(due, sender, "gw"))

    def count(self, outcome: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "imgq_webhook_deliveries_total", {"outcome": outcome}
        )
        assert value is not None
        return value


def final(job: JobEvent, status: JobStatus = JobStatus.SUCCEEDED, **changes: Any) -> JobEvent:
    now = time.time()
    values: dict[str, Any] = {"started_at": now, "finished_at": now, "replica": "replica-1"}
    if status is JobStatus.SUCCEEDED:
        values["result"] = (Label("espresso", 967, 0.9),)
    else:
        values["error"] = JobFailure("image_decode_failed", "truncated")
    return job.advance(status, **{**values, **changes})


# -- a job's callback ---------------------------------------------------------------------------


def test_a_final_job_is_posted_as_get_answers_it_signed_with_its_owners_secret() -> None:
    gateway = Gateway()
    done = final(queued(callback=URL, owner=ALICE))
    assert gateway.handle(done, "cl") is Settle.ACK
    [(delivery, secret)] = gateway.poster.posted
    assert secret == secret_for_token("alice")
    assert (delivery.url, delivery.event, delivery.attempt) == (URL, "job.succeeded", 1)
    assert delivery.delivery_id == delivery_id("job", done.job_id)
    assert orjson.loads(delivery.body) == {
        "id": delivery.delivery_id,
        "type": "job.succeeded",
        "job": job_answer(done, None),
    }
    assert gateway.count("succeeded") == 1
    # The same final event again (a replica that died after publishing it): the same ID.
    gateway.handle(done, "cl")
    assert gateway.poster.posted[1][0].delivery_id == delivery.delivery_id


def test_a_job_submitted_without_a_token_is_signed_with_the_configured_secret() -> None:
    gateway = Gateway(tokens=(), secret="c" * 32)
    gateway.handle(final(queued(callback=URL)), "cl")
    assert [secret for _, secret in gateway.poster.posted] == ["c" * 32]


@pytest.mark.parametrize(
    ("status", "sender", "kind"),
    [
        (JobStatus.SUCCEEDED, "cl", "job.succeeded"),
        (JobStatus.FAILED, "cl", "job.failed"),
        (JobStatus.CANCELLED, "gw", "job.cancelled"),
    ],
)
def test_every_final_status_calls_back(status: JobStatus, sender: str, kind: str) -> None:
    gateway = Gateway()
    gateway.handle(final(queued(callback=URL, owner=ALICE), status), sender)
    assert [delivery.event for delivery, _ in gateway.poster.posted] == [kind]


def test_only_a_gateways_request_gets_a_callback() -> None:
    gateway = Gateway()
    # A producer's request (any user but a gateway's) names a callback: never called.
    from_producer = final(queued(callback=URL, owner=ALICE, requested_by="producer"))
    assert gateway.handle(from_producer, "cl") is Settle.ACK
    # A result only a classifier may report, sent by someone else.
    assert gateway.handle(final(queued(callback=URL, owner=ALICE)), "producer") is Settle.ACK
    assert gateway.handle(final(queued(callback=URL, owner=ALICE)), "gw") is Settle.ACK
    # An event written before events named their request's sender.
    old = replace(final(queued(callback=URL, owner=ALICE)), requested_by=None)
    assert gateway.handle(old, "cl") is Settle.ACK
    # Not final yet: nothing to say.
    started = queued(callback=URL, owner=ALICE).advance(JobStatus.STARTED, started_at=1.0)
    assert gateway.handle(started, "cl") is Settle.ACK
    assert gateway.poster.posted == []
    # A result a gateway decides (a reused one) is its to send.
    reused = final(queued(callback=URL, owner=ALICE), reused_from=new_job_id())
    gateway.handle(reused, "gw")
    assert len(gateway.poster.posted) == 1


def test_a_delivery_back_from_its_delay_is_believed_only_from_a_gateway() -> None:
    gateway = Gateway(answers=[Attempt(False, "down")])
    retry = gateway.handle(final(queued(callback=URL, owner=ALICE)), "cl")
    assert isinstance(retry, Retry)
    assert gateway.handle(retry.delivery, "producer") is Settle.ACK
    assert gateway.handle(replace(retry.delivery, url="https://8.8.8.8/"), "cl") is Settle.ACK
    assert len(gateway.poster.posted) == 1
    assert gateway.handle(retry.delivery, "gw") is Settle.ACK
    assert [d.attempt for d, _ in gateway.poster.posted] == [1, 2]


def test_one_user_for_every_service_believes_only_its_own_users_requests() -> None:
    """The local launcher's layout: no sender lists, every service as the same user."""
    gateway = Gateway(senders=Senders())
    mine = final(queued(callback=URL, owner=ALICE, requested_by="gw"))
    theirs = final(queued(callback=URL, owner=ALICE, requested_by="someone-else"))
    gateway.handle(mine, "gw")
    gateway.handle(theirs, "someone-else")
    assert [d.job_id for d, _ in gateway.poster.posted] == [mine.job_id]


# -- retries ----------------------------------------------------------------------------------


def test_a_failed_attempt_waits_each_delay_in_turn_then_is_given_up() -> None:
    gateway = Gateway(answers=[Attempt(False, "answered 500")] * 3)
    first = gateway.handle(final(queued(callback=URL, owner=ALICE)), "cl")
    assert isinstance(first, Retry)
    assert (first.delay, first.delivery.attempt) == (1.0, 2)
    second = gateway.handle(first.delivery, "gw")
    assert isinstance(second, Retry)
    assert (second.delay, second.delivery.attempt) == (5.0, 3)
    assert gateway.handle(second.delivery, "gw") is Settle.ACK
    posted = [delivery for delivery, _ in gateway.poster.posted]
    assert [d.attempt for d in posted] == [1, 2, 3]
    assert len({(d.delivery_id, d.body, d.first_attempt_at) for d in posted}) == 1
    assert (gateway.count("retried"), gateway.count("given_up")) == (2, 1)
    assert gateway.count("succeeded") == 0


def test_a_receiver_that_answers_gone_is_not_tried_again() -> None:
    gateway = Gateway(answers=[Attempt(False, "answered 410", final=True)])
    assert gateway.handle(final(queued(callback=URL, owner=ALICE)), "cl") is Settle.ACK
    assert (gateway.count("retried"), gateway.count("given_up")) == (0, 1)


def test_a_callback_nothing_signs_any_more_is_given_up_unsent() -> None:
    gateway = Gateway(tokens=("bob",))  # alice's token was removed since she submitted
    assert gateway.handle(final(queued(callback=URL, owner=ALICE)), "cl") is Settle.ACK
    assert gateway.poster.posted == []
    assert gateway.count("given_up") == 1


def test_the_retry_schedule() -> None:
    retries = WebhookRetries.from_env({"IMGQ_WEBHOOK_RETRY_DELAYS": "0.5, 30,30"})
    assert retries.delays == (0.5, 30.0, 30.0)
    assert [retries.delay_after(n) for n in range(5)] == [None, 0.5, 30.0, 30.0, None]
    assert retries.attempts == 4
    assert WebhookRetries.from_env({}).delays == (10.0, 60.0, 600.0, 3600.0)
    for bad in ("soon", "0", "-1", "1e9", ","):
        with pytest.raises(SettingsError, match="IMGQ_WEBHOOK_RETRY_DELAYS"):
            WebhookRetries.from_env({"IMGQ_WEBHOOK_RETRY_DELAYS": bad})


def test_each_delay_is_a_queue_that_hands_its_deliveries_back_when_they_expire() -> None:
    retries = WebhookRetries((0.25, 600.0), Replication(3))
    assert webhook_delay_queue(0.25) == "imgq.webhooks.delay.250ms"
    assert webhook_delay_queue(600) == "imgq.webhooks.delay.600000ms"
    assert retries.delay_arguments(600) == {
        "x-queue-type": "quorum",
        "x-message-ttl": 600_000,
        "x-dead-letter-exchange": WEBHOOKS_EXCHANGE,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
        "x-max-length": 100_000,
        "x-quorum-initial-group-size": 3,
    }
    assert retries.due_arguments() == {
        "x-queue-type": "quorum",
        "x-delivery-limit": WEBHOOK_DELIVERY_LIMIT,
        "x-quorum-initial-group-size": 3,
    }


# -- a batch's callback -------------------------------------------------------------------------


def _batch(log: FakeLog, size: int) -> tuple[list[JobEvent], list[Any]]:
    """A batch's jobs, queued, and their log entries."""
    batch_id = new_job_id()
    jobs = [
        queued(callback=URL, owner=ALICE, batch=BatchRef(batch_id, i, size), image_name=f"{i}.jpg")
        for i in range(size)
    ]
    return jobs, [log.event(job, "gw") for job in jobs]


def test_a_batch_is_posted_once_by_the_job_whose_end_is_last_in_the_log() -> None:
    log = FakeLog()
    jobs, entries = _batch(log, 3)
    finals = [final(job) for job in jobs]
    # They end in the order 2, 0, 1: job 1's final event is the batch's last in the log.
    ends = [log.event(finals[i], "cl") for i in (2, 0, 1)]
    gateways = [Gateway(), Gateway()]
    for gateway in gateways:
        run(gateway.read(*entries, *ends))
    # Each job's final event reaches one gateway or the other (here both, to compare).
    for gateway in gateways:
        for event in finals:
            assert gateway.handle(event, "cl") is Settle.ACK
        [(delivery, _)] = gateway.poster.posted
        assert delivery.job_id == jobs[1].job_id
        assert delivery.delivery_id == delivery_id("batch", jobs[0].batch.batch_id)  # type: ignore[union-attr]
    first, second = (g.poster.posted[0][0] for g in gateways)
    assert first.body == second.body
    payload = orjson.loads(first.body)
    assert payload["type"] == "batch.done"
    batch = payload["batch"]
    assert batch["done"] is True
    assert [job["image"] for job in batch["jobs"]] == ["0.jpg", "1.jpg", "2.jpg"]
    assert batch["counts"]["succeeded"] == 3


def test_a_batch_is_not_posted_while_one_of_its_jobs_runs() -> None:
    log = FakeLog()
    jobs, entries = _batch(log, 2)
    gateway = Gateway()
    done = final(jobs[0])
    run(gateway.read(*entries, log.event(done, "cl")))
    assert gateway.handle(done, "cl") is Settle.ACK
    assert gateway.poster.posted == []
    later = final(jobs[1], JobStatus.FAILED)
    run(gateway.read(log.event(later, "cl")))
    gateway.handle(later, "cl")
    assert [d.event for d, _ in gateway.poster.posted] == ["batch.done"]
    assert orjson.loads(gateway.poster.posted[0][0].body)["batch"]["counts"]["failed"] == 1


def test_a_batch_job_waits_for_the_log_to_bring_its_end() -> None:
    log = FakeLog()
    jobs, entries = _batch(log, 1)
    done = final(jobs[0])
    gateway = Gateway()

    async def scenario() -> Outcome:
        await gateway.read(*entries)
        handling = asyncio.create_task(gateway.webhooks.handle(done, "cl", "gw"))
        await asyncio.sleep(0)  # it is waiting: the log has not brought the job's end
        assert not handling.done()
        await gateway.read(log.event(done, "cl"))
        return await handling

    assert run(scenario()) is Settle.ACK
    assert len(gateway.poster.posted) == 1


def test_a_batch_job_whose_end_the_log_never_brings_is_handed_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(webhooks_module, "LOG_WAIT_SECONDS", 0.01)
    log = FakeLog()
    jobs, entries = _batch(log, 1)
    gateway = Gateway()
    run(gateway.read(*entries))
    assert gateway.handle(final(jobs[0]), "cl") is Settle.REQUEUE
    assert gateway.poster.posted == []


def test_the_log_keeps_each_batch_jobs_first_end() -> None:
    log = FakeLog()
    jobs, entries = _batch(log, 2)
    gateway = Gateway()
    done = final(jobs[0])
    end = log.event(done, "cl")
    run(gateway.read(*entries, end, log.event(done, "cl")))
    ends = gateway.follower.batch_ends
    assert run(ends.wait(done.job_id, 0)) == wire.LogDelivery.of(end).offset
    assert len(ends) == 1  # the repeat changed nothing
    # A single job's end is not kept: no batch waits for it.
    single = final(queued(callback=URL))
    run(gateway.read(log.event(single, "cl")))
    assert len(ends) == 1
    # A job deleted once final still counts as ended: the batch completes all the same.
    gateway.store.forget(done.job_id)
    later = final(jobs[1])
    run(gateway.read(log.event(later, "cl")))
    assert ends.last(jobs[0].batch.batch_id) == later.job_id  # type: ignore[union-attr]


def test_batch_ends_are_bounded_and_wake_their_waiters() -> None:
    ends = BatchEnds(limit=3)
    first, second = BatchRef(new_job_id(), 0, 2), BatchRef(new_job_id(), 0, 2)

    async def scenario() -> None:
        waiting = asyncio.create_task(ends.wait("a", 60))
        await asyncio.sleep(0)
        ends.record(first, "a", 7)
        ends.record(first, "a", 9)  # a later final event of the same job changes nothing
        assert await waiting == 7
        assert ends.last(first.batch_id) is None  # job 1 has not ended
        ends.record(replace(first, index=1), "b", 8)
        assert ends.last(first.batch_id) == "b"
        ends.record(second, "c", 10)
        ends.record(replace(second, index=1), "d", 11)  # past the limit: the oldest batch goes
        assert ends.last(first.batch_id) is None
        assert await ends.wait("a", 0.01) is None
        assert ends.last(second.batch_id) == "d"

    run(scenario())


# -- on the wire --------------------------------------------------------------------------------


def test_the_callback_travels_in_the_request_and_every_event() -> None:
    request = queued(callback=URL).advance(JobStatus.QUEUED)
    out = wire.event_message(request)
    assert WEBHOOK_HEADER not in (out.message.headers or {})  # not final: no copy
    ended = final(request)
    out = wire.event_message(ended)
    assert (out.message.headers or {})[WEBHOOK_HEADER] == "due"
    parsed = wire.parse_webhook(delivered(out.message, out.routing_key))
    assert parsed == ended
    # A job without a callback never reaches the due queue.
    plain = final(queued())
    assert WEBHOOK_HEADER not in (wire.event_message(plain).message.headers or {})


def test_a_requests_callback_header_is_read_back_and_bounded() -> None:
    from tests.fake_log import request as make_request

    sent = make_request(callback=URL, requested_by="gw")
    out = wire.request_message(sent, user_id="gw")
    got = wire.parse_request(delivered(out.message))
    assert got.callback == URL
    assert JobEvent.for_request(got, JobStatus.STARTED).callback == URL
    out.message.headers = {
        **(out.message.headers or {}),
        "callback": "x" * (MAX_CALLBACK_CHARS + 1),
    }
    with pytest.raises(MessageError, match="callback"):
        wire.parse_request(delivered(out.message))


def test_a_delivery_waits_in_the_queue_of_its_delay() -> None:
    gateway = Gateway(answers=[Attempt(False, "down")])
    retry = gateway.handle(final(queued(callback=URL, owner=ALICE)), "cl")
    assert isinstance(retry, Retry)
    out = wire.webhook_retry_message(retry.delivery, retry.delay, user_id="gw")
    assert out.routing_key == webhook_delay_queue(1.0)
    assert (out.message.headers or {})[WEBHOOK_HEADER] == "due"
    assert wire.parse_webhook(delivered(out.message, out.routing_key)) == retry.delivery


# -- the consumer ---------------------------------------------------------------------------------


class Publisher:
    user = "gw"

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.retries: list[tuple[WebhookDelivery, float]] = []

    async def publish_webhook_retry(self, delivery: WebhookDelivery, delay: float) -> None:
        if self.error is not None:
            raise self.error
        self.retries.append((delivery, delay))


def _consume(
    gateway: Gateway, publisher: Publisher, messages: list[Any], channel: FakeChannel
) -> list[tuple[str, bool]]:
    consumer = WebhookConsumer(gateway.webhooks, publisher, gateway.metrics)

    async def main() -> None:
        for message in messages:
            await consumer.on_message(message)
        await consumer.drained()

    run(main())
    return [(what, requeue) for what, _, requeue in channel.settled]


def _due(event: JobEvent, channel: FakeChannel, user_id: str = "cl") -> Any:
    out = wire.event_message(event, user_id=user_id)
    return delivered(out.message, out.routing_key, channel=channel)


def test_the_consumer_publishes_a_retry_before_it_acks() -> None:
    channel = FakeChannel()
    gateway = Gateway(answers=[Attempt(False, "down")])
    publisher = Publisher()
    settled = _consume(
        gateway, publisher, [_due(final(queued(callback=URL, owner=ALICE)), channel)], channel
    )
    assert settled == [("ack", False)]
    [(delivery, delay)] = publisher.retries
    assert (delivery.attempt, delay) == (2, 1.0)


def test_the_consumer_settles_whatever_happens() -> None:
    channel = FakeChannel()
    # A retry the broker did not confirm: the message again, for another try.
    gateway = Gateway(answers=[Attempt(False, "down")])
    message = _due(final(queued(callback=URL, owner=ALICE)), channel)
    assert _consume(gateway, Publisher(BrokerUnavailable("gone")), [message], channel) == [
        ("nack", True)
    ]
    # A retry the broker refuses for good (its delay queue is full or missing): given up.
    channel = FakeChannel()
    gateway = Gateway(answers=[Attempt(False, "down")])
    message = _due(final(queued(callback=URL, owner=ALICE)), channel)
    assert _consume(gateway, Publisher(RetryRefused("full")), [message], channel) == [
        ("ack", False)
    ]
    assert gateway.count("given_up") == 1
    # What cannot be read is dropped, and the next message is handled as usual.
    channel = FakeChannel()
    gateway = Gateway()
    garbage = delivered(wire.event_message(final(queued())).message, channel=channel)
    garbage.body = b"not json"  # type: ignore[misc]
    good = _due(final(queued(callback=URL, owner=ALICE)), channel)
    assert _consume(gateway, Publisher(), [garbage, good], channel) == [
        ("reject", False),
        ("ack", False),
    ]
    assert len(gateway.poster.posted) == 1
