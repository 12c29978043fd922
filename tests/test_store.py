"""The gateway's job store and long-poll waiters (pure unit tests)."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.store import JobStore
from shared.errors import JobNotFound
from shared.messages import ClassifyRequest, JobEvent, new_job_id
from shared.states import JobStatus


def _queued() -> JobEvent:
    request = ClassifyRequest(new_job_id(), "efficientnet_lite0", "cat.jpg", b"", time.time())
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


def test_unknown_jobs_and_bounded_size() -> None:
    store = JobStore(ttl=60, max_jobs=3)
    jobs = [_queued() for _ in range(5)]
    for job in jobs:
        store.apply(job)
    assert len(store) == 3
    with pytest.raises(JobNotFound):
        store.get(jobs[0].job_id)
    assert store.get(jobs[-1].job_id).status is JobStatus.QUEUED


def test_finished_jobs_expire_after_the_ttl() -> None:
    store = JobStore(ttl=1, max_jobs=100)
    old = _queued()
    store.apply(old.advance(JobStatus.SUCCEEDED, finished_at=time.time() - 5))
    store.apply(_queued())  # any change sweeps expired jobs from the front
    with pytest.raises(JobNotFound):
        store.get(old.job_id)
