"""gateway/log_follower.py and gateway/log_consumer.py: the event log applied to the store and
acked in bulk, with fake deliveries (no broker, no sleeps)."""

from __future__ import annotations

import asyncio
import logging
import time

import orjson
import pytest
from aiormq.abc import DeliveredMessage

from gateway import log_consumer
from gateway.batch_store import Batches
from gateway.log_consumer import LogConsumer
from gateway.log_follower import LogFollower
from gateway.senders import Senders
from gateway.store import JobStore
from shared import wire
from shared.messages import BatchRecord, BatchRef, JobEvent, JobFailure, new_job_id
from shared.states import JobStatus
from tests.fake_log import FakeChannel, FakeLog, queued

ENFORCED = Senders(gateways=frozenset({"gw"}), classifiers=frozenset({"cl"}))


class Gateway:
    """A follower with its store and batches, in a session connected as broker user "gw",
    reading through the log consumer."""

    def __init__(self, senders: Senders = ENFORCED, channel: FakeChannel | None = None) -> None:
        self.store = JobStore(ttl=60, max_jobs=1000)
        self.batches = Batches(self.store)
        self.follower = LogFollower(self.store, self.batches, senders)
        self.log = FakeLog(channel)
        self.marker = new_job_id()
        self.start_offset = self.follower.begin(self.marker, "gw")

    def read(self, *messages: DeliveredMessage) -> None:
        """Each message through a log consumer, then its acks sent."""

        async def consume() -> None:
            consumer = LogConsumer(self.follower, self.log.channel)  # type: ignore[arg-type]
            for message in messages:
                await consumer.on_delivery(message)
            consumer.flush()
            await consumer.acked()

        asyncio.run(consume())

    def marker_entry(self, value: str | None = None) -> object:
        return self.log.entry(wire.marker_message(value or self.marker), "gw")


def test_a_replay_is_ready_at_its_own_marker_and_a_session_resumes_after_the_last_offset() -> None:
    gateway = Gateway()
    assert gateway.start_offset == "first"
    jobs = [queued() for _ in range(3)]
    gateway.read(*(gateway.log.event(job, "gw") for job in jobs))
    assert not gateway.follower.caught_up
    gateway.read(gateway.marker_entry(new_job_id()))  # another gateway's marker
    assert not gateway.follower.caught_up
    assert not gateway.follower.replayed
    gateway.read(gateway.marker_entry())
    assert gateway.follower.caught_up
    assert gateway.follower.replayed
    assert gateway.follower.replay_seconds is not None
    assert [gateway.store.get(job.job_id).status for job in jobs] == [JobStatus.QUEUED] * 3

    # The next session reads on right after the last entry (offsets 0 to 4), and is not
    # caught up until its own marker comes back, though the store stays replayed.
    assert gateway.follower.begin("second", "gw") == 5
    assert not gateway.follower.caught_up
    assert gateway.follower.replayed
    gateway.follower.log_replaced()
    assert gateway.follower.begin("third", "gw") == "first"


def test_every_entry_is_acked_at_once_and_a_bad_one_is_skipped_with_its_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gateway = Gateway()
    before, after = queued(), queued()
    bad_batch = orjson.loads(queued().to_json())
    # Passes the digit check, then fails the conversion: not a MessageError.
    bad_batch["batch"] = f"{new_job_id()}/\N{SUPERSCRIPT TWO}/5"
    hostile = [
        (b"not json", "job.queued"),
        (b"\xff\xfe\x00", "job.started"),
        (b'{"v": 99}', "job.succeeded"),
        (b"[1, 2]", "job.forgotten"),
        (b'{"v": 2, "job_id": 7}', "job.batch"),
        (orjson.dumps(bad_batch), "job.queued"),
        (b"\xff" * 64, "marker.x"),
        (b'{"v": 2, "result": {"a": [[[[]]]]}}', "job.failed"),
    ]
    entries = [
        gateway.log.event(before, "gw"),
        *(gateway.log.entry(raw, "gw") for raw in hostile),
        gateway.log.event(after, "gw"),
        gateway.marker_entry(),
    ]
    with caplog.at_level(logging.WARNING):
        gateway.read(*entries)
    assert gateway.store.get(before.job_id).status is JobStatus.QUEUED
    assert gateway.store.get(after.job_id).status is JobStatus.QUEUED
    assert gateway.follower.caught_up
    # One ack for all of them: a stream's acks are only the consumer's credit.
    assert gateway.log.channel.settled == [("ack", len(entries), True)]
    assert gateway.follower.offset == len(entries) - 1
    skipped = [
        r for r in caplog.records if "ignoring malformed" in r.message or "skipped" in r.message
    ]
    assert len(skipped) >= len(hostile) - 1  # the marker of nobody's is not an error


def test_an_entry_the_store_cannot_take_is_skipped_and_the_log_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Broken:
        def job_changed(self, previous: JobEvent | None, current: JobEvent) -> None:
            if current.image == "boom.jpg":
                raise RuntimeError("an observer failed")

        def job_removed(self, job_id: str) -> None:
            return None

    gateway = Gateway()
    gateway.store = JobStore(ttl=60, max_jobs=10, observers=(Broken(),))
    gateway.follower = LogFollower(gateway.store, gateway.batches, ENFORCED)
    gateway.follower.begin(gateway.marker, "gw")
    boom, fine = queued(image_name="boom.jpg"), queued()
    with caplog.at_level(logging.ERROR):
        gateway.read(gateway.log.event(boom, "gw"), gateway.log.event(fine, "gw"))
    assert gateway.store.get(fine.job_id).status is JobStatus.QUEUED
    assert any("skipped: RuntimeError('an observer failed')" in r.message for r in caplog.records)
    assert gateway.log.channel.settled == [("ack", 2, True)]


def test_an_ack_on_a_closed_channel_does_not_stop_the_follower() -> None:
    gateway = Gateway(channel=FakeChannel(closed=True))
    job = queued()
    gateway.read(gateway.log.event(job, "gw"), gateway.marker_entry())
    assert gateway.store.get(job.job_id).status is JobStatus.QUEUED
    assert gateway.follower.caught_up


def test_each_event_is_taken_only_from_the_kind_of_service_that_may_send_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gateway = Gateway()
    job = queued()
    with caplog.at_level(logging.WARNING):
        gateway.read(
            gateway.log.event(job, "cl"),  # a classifier may not say "queued"
            gateway.log.event(job, "gw"),
            gateway.log.event(job.advance(JobStatus.STARTED), "gw"),  # nor a gateway "started"
            gateway.log.event(job.advance(JobStatus.CANCELLED), "cl"),
            gateway.log.entry(wire.marker_message(gateway.marker), "cl"),
        )
    assert gateway.store.get(job.job_id).status is JobStatus.QUEUED
    assert not gateway.follower.caught_up
    refused = [r.message for r in caplog.records if "who may not send it" in r.message]
    assert len(refused) == 4
    gateway.read(gateway.log.event(job.advance(JobStatus.STARTED), "cl"))
    assert gateway.store.get(job.job_id).status is JobStatus.STARTED


# -- whose request it was (gateway/senders.py) ------------------------------------------------


def _producer_claims(job: JobEvent, **fields: object) -> JobEvent:
    """An event a replica wrote for a request a producer published as "producer"."""
    return job.advance(
        JobStatus.SUCCEEDED, requested_by="producer", finished_at=time.time(), **fields
    )


def test_a_producers_request_cannot_claim_an_owner_a_batch_or_a_key() -> None:
    gateway = Gateway()
    batch = BatchRef(new_job_id(), 0, 2)
    theirs = queued(owner="alice", batch=batch, idempotency_key="k")
    gateway.read(gateway.log.event(theirs, "gw"))
    forged = queued(owner="alice", batch=BatchRef(batch.batch_id, 1, 2), idempotency_key="k2")
    forged = forged.advance(JobStatus.STARTED, requested_by="producer")
    gateway.read(gateway.log.event(forged, "cl"))
    seen = gateway.store.get(forged.job_id)
    assert (seen.owner, seen.batch, seen.idempotency_key) == (None, None, None)
    # Not in alice's batch, not under her key: the batch lists only her own job.
    assert [job.job_id for job in gateway.store.batch_members(batch.batch_id)] == [theirs.job_id]
    assert gateway.store.by_idempotency_key("k2", "alice") is None
    assert gateway.store.by_idempotency_key("k2") is None


def test_a_producers_request_cannot_touch_a_job_a_gateway_accepted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gateway = Gateway()
    theirs = queued(owner="alice")
    gateway.read(gateway.log.event(theirs, "gw"))
    failed = _producer_claims(theirs, owner="mallory").advance(JobStatus.FAILED)
    # A producer's request with no user_id at all, dead-lettered: the gateway's notice.
    dead = theirs.advance(
        JobStatus.FAILED, requested_by="", error=JobFailure("dead_lettered", "x"), owner=None
    )
    with caplog.at_level(logging.WARNING):
        gateway.read(gateway.log.event(failed, "cl"), gateway.log.event(dead, "gw"))
    job = gateway.store.get(theirs.job_id, "alice")
    assert (job.status, job.owner) == (JobStatus.QUEUED, "alice")
    assert sum("not a gateway" in r.message for r in caplog.records) == 2
    # Its own replica's events still apply.
    done = theirs.advance(JobStatus.SUCCEEDED, finished_at=time.time())
    gateway.read(gateway.log.event(done, "cl"))
    assert gateway.store.get(theirs.job_id, "alice").status is JobStatus.SUCCEEDED


def test_a_producers_own_job_is_shown_without_the_fields_it_claimed() -> None:
    gateway = Gateway()
    job = JobEvent(new_job_id(), JobStatus.STARTED, "efficientnet_lite0", "x.jpg")
    gateway.read(gateway.log.event(_producer_claims(job, owner="alice"), "cl"))
    seen = gateway.store.get(job.job_id)
    assert seen.status is JobStatus.SUCCEEDED
    assert seen.owner is None


def test_an_event_from_before_requested_by_existed_moves_its_job_but_claims_nothing() -> None:
    gateway = Gateway()
    theirs = queued(owner="alice", idempotency_key="k")
    gateway.read(gateway.log.event(theirs, "gw"))
    legacy = theirs.advance(JobStatus.STARTED, requested_by=None, owner="mallory")
    gateway.read(gateway.log.event(legacy, "cl"))
    job = gateway.store.get(theirs.job_id, "alice")
    assert (job.status, job.owner, job.idempotency_key) == (JobStatus.STARTED, "alice", "k")


def test_without_gateway_users_configured_a_gateway_trusts_its_own_user() -> None:
    gateway = Gateway(senders=Senders())
    mine = queued(owner="alice")
    gateway.read(gateway.log.event(mine, "gw"))
    assert gateway.store.get(mine.job_id, "alice").owner == "alice"
    forged = queued(owner="alice", requested_by="producer")
    gateway.read(gateway.log.event(forged.advance(JobStatus.STARTED), "anyone"))
    assert gateway.store.get(forged.job_id).owner is None


# -- batch records and forgotten jobs ----------------------------------------------------------


def test_a_batch_record_makes_the_batch_whole_and_only_a_gateway_may_log_one() -> None:
    gateway = Gateway()
    earlier = queued(idempotency_key="k#0", owner="alice")  # names no batch: a replayed key
    new = queued(owner="alice", batch=BatchRef(batch_id := new_job_id(), 1, 2))
    record = BatchRecord(batch_id, "efficientnet_lite0", (earlier.job_id, new.job_id), "alice", 1.0)
    forged = BatchRecord(new_job_id(), "efficientnet_lite0", (earlier.job_id,), None, 1.0)
    gateway.read(
        gateway.log.event(earlier, "gw"),
        gateway.log.event(new, "gw"),
        gateway.log.entry(wire.batch_message(record), "gw"),
        gateway.log.entry(wire.batch_message(forged), "cl"),
    )
    batch = gateway.batches.get(batch_id, "alice")
    assert batch.job_ids == (earlier.job_id, new.job_id)
    assert batch.complete
    with pytest.raises(Exception, match="no batch"):
        gateway.batches.get(forged.batch_id)


def test_a_forgotten_job_is_gone() -> None:
    gateway = Gateway()
    job = queued()
    gateway.read(
        gateway.log.event(job.advance(JobStatus.SUCCEEDED, finished_at=time.time()), "cl"),
        gateway.log.entry(wire.forgotten_message(job.job_id), "gw"),
    )
    with pytest.raises(Exception, match="deleted"):
        gateway.store.get(job.job_id)


# -- batches of events -------------------------------------------------------------------------


def test_a_batch_of_events_is_applied_in_order_each_checked_on_its_own(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gateway = Gateway()
    first, second = queued(), queued()
    gateway.read(gateway.log.events(first, second, user_id="gw"))
    assert gateway.store.get(second.job_id).status is JobStatus.QUEUED
    done = first.advance(JobStatus.SUCCEEDED, finished_at=time.time(), replica="r")
    started = second.advance(JobStatus.STARTED, started_at=time.time(), replica="r")
    # A replica's message: one job's result, the next job's "started", and an event no replica
    # may send (a "queued"), which alone is refused.
    with caplog.at_level(logging.WARNING):
        gateway.read(gateway.log.events(done, started, queued(), user_id="cl"))
    assert gateway.store.get(first.job_id).status is JobStatus.SUCCEEDED
    assert gateway.store.get(second.job_id).status is JobStatus.STARTED
    assert len(gateway.store) == 2
    assert sum("who may not send it" in r.message for r in caplog.records) == 1


def test_a_bad_event_in_a_batch_costs_only_itself(caplog: pytest.LogCaptureFixture) -> None:
    gateway = Gateway()
    good, other = queued(), queued()
    body = orjson.dumps(
        {
            "v": 2,
            "events": [
                orjson.loads(good.to_json()),
                {"status": "queued"},
                "not an event",
                orjson.loads(other.to_json()),
            ],
        }
    )
    with caplog.at_level(logging.WARNING):
        gateway.read(gateway.log.entry((body, "job.events"), "gw"), gateway.marker_entry())
    assert gateway.store.get(good.job_id).status is JobStatus.QUEUED
    assert gateway.store.get(other.job_id).status is JobStatus.QUEUED
    assert gateway.follower.caught_up
    assert sum("ignoring malformed event" in r.message for r in caplog.records) == 2


# -- acks in bulk --------------------------------------------------------------------------------


def test_acks_go_out_every_so_many_deliveries_and_soon_after_the_last() -> None:
    gateway = Gateway()
    count = log_consumer.ACK_EVERY + 3
    messages = [gateway.log.event(queued(), "gw") for _ in range(count)]
    acked = asyncio.Event()

    class Channel(FakeChannel):
        def _record(self, what: str, tag: int, requeue: bool) -> None:
            super()._record(what, tag, requeue)
            if tag == count:
                acked.set()

    channel = Channel()

    async def consume() -> None:
        consumer = LogConsumer(gateway.follower, channel)  # type: ignore[arg-type]
        for message in messages:
            await consumer.on_delivery(message)
        # The last three wait for the timer (ACK_DELAY), not for more deliveries.
        await asyncio.wait_for(acked.wait(), 30)

    asyncio.run(consume())
    assert channel.settled == [("ack", log_consumer.ACK_EVERY, True), ("ack", count, True)]
    assert len(gateway.store) == count
