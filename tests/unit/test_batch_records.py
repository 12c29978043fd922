"""A batch any gateway can answer for in full: when a member is an earlier job (its idempotency
key replayed) the accepting gateway logs the batch's record; a member answered from an earlier
result is a job of its own that names the batch.  Unit tests of gateway/submissions.py with a
fake publisher (no broker, no sleeps); tests/service/test_batches.py checks it across gateways."""

from __future__ import annotations

import asyncio
import time

import orjson

from gateway.batch_store import Batches
from gateway.clients import Caller
from gateway.metrics import GatewayMetrics
from gateway.store import JobStore
from gateway.submissions import Accepted, Jobs, Submission
from shared.messages import BatchRecord, BatchRef, ClassifyRequest, JobEvent, new_job_id
from shared.states import JobStatus

MODEL = "efficientnet_lite0"
ALICE = Caller(owner="alice", address="127.0.0.1")


class Publisher:
    ready = True
    user = "gw"

    def __init__(self) -> None:
        self.requests: list[ClassifyRequest] = []
        self.events: list[JobEvent] = []
        self.records: list[BatchRecord] = []

    async def submit(self, request: ClassifyRequest, queued: JobEvent, content_type: str) -> None:
        self.requests.append(request)

    async def publish_event(self, event: JobEvent) -> None:
        self.events.append(event)

    async def publish_forgotten(self, job_id: str) -> None:
        return None

    async def publish_batch(self, record: BatchRecord) -> None:
        self.records.append(record)


def _batch(
    store: JobStore, broker: Publisher, images: list[bytes], key: str | None
) -> list[Accepted]:
    batch_id = new_job_id()
    submissions = [
        Submission(
            MODEL,
            f"{index}.jpg",
            image,
            "image/jpeg",
            idempotency_key=None if key is None else f"{key}#{index}",
            batch=BatchRef(batch_id, index, len(images)),
        )
        for index, image in enumerate(images)
    ]
    jobs = Jobs(store, broker, GatewayMetrics())
    return asyncio.run(jobs.accept_all(submissions, ALICE.owner))


def test_a_batch_of_new_jobs_logs_no_record_and_its_requests_name_their_sender() -> None:
    store, broker = JobStore(ttl=60, max_jobs=100), Publisher()
    accepted = _batch(store, broker, [b"a", b"b"], key="k")
    assert broker.records == []
    assert [request.requested_by for request in broker.requests] == ["gw", "gw"]
    assert all(item.job.requested_by == "gw" for item in accepted)


def test_a_retried_batch_whose_keys_replay_logs_its_record() -> None:
    store, broker = JobStore(ttl=60, max_jobs=100), Publisher()
    first = _batch(store, broker, [b"a", b"b"], key="k")
    # Without a key every job is new and names its batch: no record.
    unkeyed = _batch(store, broker, [b"a", b"c"], key=None)
    assert broker.records == []
    # The same batch again with its key: both images replay the first batch's jobs.
    again = _batch(store, broker, [b"a", b"b"], key="k")
    assert [item.replayed for item in again] == [True, True]
    [record] = broker.records
    assert record.job_ids == tuple(item.job.job_id for item in first)
    assert record.owner == "alice"
    assert record.model == MODEL
    assert len(unkeyed) == 2

    # Another gateway, which knows the jobs from the log: the record makes the batch whole.
    other = Batches(store)
    other.record(record)
    assert other.get(record.batch_id, "alice").job_ids == record.job_ids
    assert other.get(record.batch_id, "alice").complete


def test_an_image_answered_from_an_earlier_result_is_a_job_of_the_batch() -> None:
    store, broker = JobStore(ttl=60, max_jobs=100), Publisher()
    [earlier] = _batch(store, broker, [b"same"], key=None)
    store.apply(earlier.job.advance(JobStatus.SUCCEEDED, finished_at=time.time()))
    # A single job reusing it (a reuse of the client's own, which a later single submission
    # would be answered with again).
    [reuse] = _batch(store, broker, [b"same"], key=None)
    assert reuse.job.reused_from == earlier.job.job_id
    [member] = _batch(store, broker, [b"same"], key=None)
    assert member.job.job_id not in (earlier.job.job_id, reuse.job.job_id)
    assert member.job.batch is not None
    assert broker.records == []


def test_the_asyncapi_document_describes_a_batch_record() -> None:
    from tests.asyncapi_schemas import schema_errors, schema_properties

    record = BatchRecord(new_job_id(), MODEL, (new_job_id(), new_job_id()), None, time.time())
    body = record.to_json()
    assert schema_errors("BatchRecord", body) == []
    assert schema_properties("BatchRecord") == set(orjson.loads(body))
    assert BatchRecord.from_json(body) == record
