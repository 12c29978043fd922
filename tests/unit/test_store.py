"""The gateway's job store and long-poll waiters (pure unit tests)."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.store import JobStore
from shared.errors import JobGone, JobNotFound
from shared.messages import ClassifyRequest, JobEvent, new_job_id
from shared.states import JobStatus


def _queued() -> JobEvent:
    request = ClassifyRequest(new_job_id(), "efficientnet_lite0", "cat.jpg", time.time(), image=b"")
    return JobEvent.for_request(request, JobStatus.QUEUED)


def test_events_only_move_a_job_forward() -> None:
    store = JobStore(ttl=60, max_jobs=10)
    job = _queued()
    assert store.apply(job)
    done = job.advance(JobStatus.SUCCEEDED, finished_at=time.time())
    assert store.apply(done)
    # A late or redelivered "started" must not hide the result.
    assert not store.apply(job.advance(JobStatus.STARTED))
    assert not store.apply(done)
    assert store.get(job.job_id).status is JobStatus.SUCCEEDED


def test_a_final_event_keeps_queued_at_from_the_gateway() -> None:
    store = JobStore(ttl=60, max_jobs=10)
    job = _queued()
    store.apply(job)
    store.apply(job.advance(JobStatus.FAILED, queued_at=None))
    assert store.get(job.job_id).queued_at == job.queued_at


def test_long_poll_wakes_on_the_final_event() -> None:
    async def scenario() -> tuple[JobStatus, float]:
        store = JobStore(ttl=60, max_jobs=10)
        job = _queued()
        store.apply(job)
        loop = asyncio.get_running_loop()
        loop.call_later(0.05, store.apply, job.advance(JobStatus.STARTED))
        loop.call_later(0.10, store.apply, job.advance(JobStatus.SUCCEEDED))
        started = loop.time()
        result = await store.wait(job.job_id, 5.0)
        assert store.waiting == 0
        return result.status, loop.time() - started

    status, elapsed = asyncio.run(scenario())
    assert status is JobStatus.SUCCEEDED
    assert 0.09 < elapsed < 1.0


def test_long_poll_with_since_wakes_on_any_change() -> None:
    async def scenario() -> JobStatus:
        store = JobStore(ttl=60, max_jobs=10)
        job = _queued()
        store.apply(job)
        asyncio.get_running_loop().call_later(0.05, store.apply, job.advance(JobStatus.STARTED))
        return (await store.wait(job.job_id, 5.0, since=JobStatus.QUEUED)).status

    assert asyncio.run(scenario()) is JobStatus.STARTED


def test_long_poll_times_out_and_release_all_answers_at_once() -> None:
    async def scenario() -> tuple[float, float]:
        store = JobStore(ttl=60, max_jobs=10)
        job = _queued()
        store.apply(job)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await store.wait(job.job_id, 0.1)
        timed_out = loop.time() - t0
        loop.call_later(0.05, store.release_all)
        t1 = loop.time()
        await store.wait(job.job_id, 10.0)
        return timed_out, loop.time() - t1

    timed_out, released = asyncio.run(scenario())
    assert 0.09 < timed_out < 1.0
    assert released < 1.0


def test_bounded_size_evicts_finished_jobs_oldest_first() -> None:
    store = JobStore(ttl=60, max_jobs=3)
    jobs = [_queued() for _ in range(5)]
    for job in jobs:
        store.apply(job.advance(JobStatus.SUCCEEDED, finished_at=time.time()))
    assert len(store) == 3
    with pytest.raises(JobGone, match="evicted"):
        store.get(jobs[0].job_id)
    assert store.get(jobs[-1].job_id).status is JobStatus.SUCCEEDED


def test_live_jobs_are_never_evicted() -> None:
    store = JobStore(ttl=60, max_jobs=3)
    queued, running = _queued(), _queued()
    store.apply(queued)
    store.apply(running.advance(JobStatus.STARTED))
    # Another client floods the store with finished jobs (result reuse costs no queue space).
    flood = [_queued() for _ in range(50)]
    for job in flood:
        store.apply(job.advance(JobStatus.SUCCEEDED, finished_at=time.time()))
    assert store.get(queued.job_id).status is JobStatus.QUEUED
    assert store.get(running.job_id).status is JobStatus.STARTED
    assert store.live == 2
    assert len(store) == 3
    with pytest.raises(JobGone, match="evicted"):
        store.get(flood[-2].job_id)
    assert store.get(flood[-1].job_id).status is JobStatus.SUCCEEDED


def test_finished_jobs_expire_after_the_ttl() -> None:
    store = JobStore(ttl=1, max_jobs=100)
    old = _queued()
    store.apply(old.advance(JobStatus.SUCCEEDED, finished_at=time.time() - 5))
    store.apply(_queued())  # any change sweeps expired jobs from the front
    with pytest.raises(JobGone, match="expired"):
        store.get(old.job_id)
    # Replaying the log later must not bring it back.
    assert not store.apply(old.advance(JobStatus.SUCCEEDED, finished_at=time.time() - 5))


def test_forgotten_jobs_are_gone_and_never_seen_ones_not_found() -> None:
    store = JobStore(ttl=60, max_jobs=10)
    job = _queued()
    store.apply(job.advance(JobStatus.SUCCEEDED, finished_at=time.time()))
    store.forget(job.job_id)
    with pytest.raises(JobGone, match="deleted"):
        store.get(job.job_id)
    assert not store.apply(job.advance(JobStatus.SUCCEEDED, finished_at=time.time()))
    with pytest.raises(JobNotFound):
        store.get(new_job_id())


def test_positions_follow_acceptance_order() -> None:
    store = JobStore(ttl=60, max_jobs=10)
    jobs = [_queued() for _ in range(3)]
    for job in jobs:
        store.apply(job)
    assert [store.position(j.job_id) for j in jobs] == [1, 2, 3]
    store.apply(jobs[0].advance(JobStatus.STARTED))
    assert store.position(jobs[0].job_id) is None
    assert [store.position(j.job_id) for j in jobs[1:]] == [1, 2]


def test_idempotency_key_survives_events_in_any_order() -> None:
    store = JobStore(ttl=60, max_jobs=10)
    job = _queued().advance(JobStatus.QUEUED, idempotency_key="order-42")
    # A replica's "started" can reach the log before the gateway's "queued" event; it carries
    # the key too, because the key travels in the request the replica built it from.
    store.apply(job.advance(JobStatus.STARTED))
    assert not store.apply(job)
    found = store.by_idempotency_key("order-42")
    assert found is not None
    assert found.job_id == job.job_id
    assert found.status is JobStatus.STARTED


def test_reusable_results_are_only_successes_on_the_same_input() -> None:
    store = JobStore(ttl=60, max_jobs=10)
    job = _queued()
    assert job.image_sha256 is not None
    store.apply(job)
    assert store.reusable_result(job.model, job.image_sha256) is None
    store.apply(job.advance(JobStatus.SUCCEEDED, finished_at=time.time()))
    reusable = store.reusable_result(job.model, job.image_sha256)
    assert reusable is not None
    assert reusable.job_id == job.job_id
    assert store.reusable_result("efficientnet_lite2", job.image_sha256) is None
    store.forget(job.job_id)
    assert store.reusable_result(job.model, job.image_sha256) is None


def test_an_event_about_another_model_or_image_is_ignored() -> None:
    store = JobStore(ttl=60, max_jobs=10)
    job = _queued()
    store.apply(job)
    assert not store.apply(job.advance(JobStatus.STARTED, model="efficientnet_lite2"))
    assert not store.apply(job.advance(JobStatus.SUCCEEDED, image_sha256="0" * 64))
    assert store.get(job.job_id).status is JobStatus.QUEUED
    assert store.apply(job.advance(JobStatus.STARTED))


def test_what_earlier_events_said_of_owner_batch_and_sender_stays() -> None:
    store = JobStore(ttl=60, max_jobs=10)
    job = _queued().advance(JobStatus.QUEUED, owner="alice", idempotency_key="k", requested_by="gw")
    store.apply(job)
    # An event whose owner, key and sender were dropped (gateway/log_follower.py) moves the
    # job on and takes nothing away.
    store.apply(job.advance(JobStatus.STARTED, owner=None, idempotency_key=None, requested_by=None))
    seen = store.get(job.job_id, "alice")
    assert (seen.status, seen.owner, seen.idempotency_key, seen.requested_by) == (
        JobStatus.STARTED,
        "alice",
        "k",
        "gw",
    )
    with pytest.raises(JobNotFound):
        store.get(job.job_id, "bob")
    # peek() is the record itself, whoever owns it, with no expiry of its own.
    assert store.peek(job.job_id) == seen
    assert store.peek(new_job_id()) is None
