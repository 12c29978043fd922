"""What GET /status and GET /metrics on the gateway are made from, in-process: the recent
activity, the gateway's job counters, and the store telling its observers of changes (the
endpoints themselves, and each replica's own /metrics: tests/service/test_status_metrics.py)."""

from __future__ import annotations

import time

import pytest

from gateway.activity import Activity
from gateway.metrics import GatewayMetrics
from gateway.store import JobStore
from shared.messages import ClassifyRequest, JobEvent, new_job_id
from shared.states import JobStatus
from tests.prometheus import parse


def _event(model: str = "efficientnet_lite0") -> JobEvent:
    request = ClassifyRequest(new_job_id(), model, "cat.jpg", time.time(), image=b"x")
    return JobEvent.for_request(request, JobStatus.QUEUED)


def test_activity_keeps_the_newest_twenty_in_place() -> None:
    activity = Activity()
    jobs = [_event() for _ in range(25)]
    for job in jobs:
        activity.job_changed(None, job)
    # A late change to an old job neither brings it back nor moves a listed one up.
    activity.job_changed(jobs[0], jobs[0].advance(JobStatus.STARTED))
    activity.job_changed(jobs[10], jobs[10].advance(JobStatus.STARTED))
    recent = activity.recent()
    assert len(recent) == 20
    assert [r["queued_at"] for r in recent] == [j.queued_at for j in reversed(jobs[5:])]
    assert recent[-6]["status"] == "started"
    assert all(
        set(r) == {"model", "status", "queued_at", "started_at", "finished_at"} for r in recent
    )
    activity.job_removed(jobs[-1].job_id)
    assert len(activity.recent()) == 19


def test_activity_jobs_per_second_counts_the_last_minute() -> None:
    activity = Activity()
    now = time.time()
    for finished in (now - 120, now - 30, now - 1, now):
        job = _event()
        activity.job_changed(None, job)
        activity.job_changed(job, job.advance(JobStatus.SUCCEEDED, finished_at=finished))
    assert activity.jobs_per_second() == pytest.approx(3 / 60)


def test_gateway_metrics_count_only_this_gateways_jobs() -> None:
    metrics = GatewayMetrics()
    mine, theirs = _event(), _event()
    metrics.accepted(mine.job_id)
    for job in (mine, theirs):
        metrics.job_changed(None, job)
        started = job.advance(JobStatus.STARTED, started_at=job.queued_at + 1)  # type: ignore[operator]
        metrics.job_changed(job, started)
        metrics.job_changed(
            started,
            started.advance(JobStatus.FAILED, finished_at=job.queued_at + 3),  # type: ignore[operator]
        )
    text = parse(metrics.expose(long_polls=2, queue_depths={}).decode())
    assert text.value("imgq_gateway_jobs_total", model="efficientnet_lite0", status="failed") == 1
    assert text.value("imgq_queue_wait_seconds_sum") == pytest.approx(1)
    assert text.value("imgq_end_to_end_seconds_sum") == pytest.approx(3)
    assert text.value("imgq_long_polls_waiting") == 2


def test_the_store_tells_its_observers_of_changes_and_removals() -> None:
    activity = Activity()
    store = JobStore(ttl=60, max_jobs=10, observers=(activity,))
    kept, deleted, discarded = _event(), _event(), _event()
    for job in (kept, deleted, discarded):
        store.apply(job)
    store.apply(kept.advance(JobStatus.SUCCEEDED, finished_at=time.time()))
    store.apply(kept.advance(JobStatus.STARTED))  # late: changes nothing, tells no one
    store.forget(deleted.job_id)
    store.discard(discarded.job_id)
    assert [r["status"] for r in activity.recent()] == ["succeeded"]
    assert activity.jobs_per_second() == pytest.approx(1 / 60)
