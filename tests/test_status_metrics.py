"""GET /status and GET /metrics on the gateway, and each replica's own /metrics.

The gateway on the session's service; the replica's listener on a cluster of its own
(a fresh broker node), where a redelivery and a dead letter can be made on purpose.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
import urllib.request

import aio_pika
import pytest

from compose.broker import free_port
from gateway.activity import Activity
from gateway.broker import queue_depths
from gateway.metrics import GatewayMetrics
from gateway.store import JobStore
from shared.catalog import CATALOG
from shared.messages import ClassifyRequest, JobEvent, new_job_id
from shared.metrics import CONTENT_TYPE
from shared.states import JobStatus
from shared.topology import REQUEST_ROUTING_KEY, REQUESTS_EXCHANGE, REQUESTS_QUEUE, model_queue
from tests import api, multipart
from tests.cluster import MODEL, WORK_QUEUE, Cluster
from tests.conftest import Service
from tests.openapi_contract import assert_response_matches
from tests.prometheus import Exposition, parse

# Family names as prometheus_client's parser gives them: a counter's drops "_total".
PROCESS_METRICS = {
    "process_resident_memory_bytes": "gauge",
    "process_cpu_seconds": "counter",
    "process_open_fds": "gauge",
}
GATEWAY_METRICS = {
    "imgq_gateway_jobs": "counter",
    "imgq_queue_wait_seconds": "histogram",
    "imgq_end_to_end_seconds": "histogram",
    "imgq_long_polls_waiting": "gauge",
    "imgq_result_reuse": "counter",
    "imgq_gateway_dead_lettered": "counter",
    "imgq_submissions_rejected": "counter",
    "imgq_queue_depth": "gauge",
    "imgq_http_requests": "counter",
    "imgq_http_request_duration_seconds": "histogram",
    "imgq_webhook_deliveries": "counter",
    **PROCESS_METRICS,
}
REPLICA_METRICS = {
    "imgq_inference_seconds": "histogram",
    "imgq_batch_size": "histogram",
    "imgq_replica_jobs": "counter",
    "imgq_redeliveries": "counter",
    "imgq_replica_dead_lettered": "counter",
    **PROCESS_METRICS,
}
_HEX32 = re.compile(rb"[0-9a-f]{32}")


def _metrics(url: str) -> Exposition:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == CONTENT_TYPE
        return parse(response.read().decode())


# -- /status -----------------------------------------------------------------------------------


@pytest.mark.broker
def test_status_shows_replicas_queue_and_recent_jobs_without_ids(service: Service) -> None:
    job = api.submit(service.base_url, "efficientnet_lite0", "camera.jpg")
    uploaded = multipart.accepted(
        multipart.upload(
            service.base_url,
            "efficientnet_lite1",
            "secret-name.jpg",
            (api.REPO / "images" / "coffee.jpg").read_bytes(),
        )
    )
    for j in (job, uploaded):
        api.wait_final(service.base_url, j["job_id"])

    # jobs_done travels in heartbeats (every 5 s here): wait for one sent after the jobs.
    deadline = time.monotonic() + 15
    while True:
        reply = api.get(service.base_url, "/status")
        assert reply.status == 200
        status = reply.json()
        if sum(r["jobs_done"] for r in status["replicas"]) >= 2:
            break
        assert time.monotonic() < deadline, status["replicas"]
        time.sleep(0.5)
    assert_response_matches("/status", "get", 200, reply.content_type, status)
    replicas = {r["replica"]: r for r in status["replicas"]}
    assert set(replicas) == {"replica-1", "replica-2"}
    for replica in replicas.values():
        # Every model ID it takes jobs for: each name (its default version) and name@version.
        assert set(replica["models"]) == {
            *CATALOG,
            *(f"{name}@1" for name in CATALOG),
        }
        assert abs(replica["last_seen"] - time.time()) < 30
    assert isinstance(status["queue_depth"], int)
    assert status["jobs_per_second"] > 0
    recent = status["recent"]
    assert 2 <= len(recent) <= 20
    # Newest first: the upload came after the gallery job.
    assert recent[0]["model"] == "efficientnet_lite1"
    assert recent[0]["status"] == "succeeded"
    assert recent[1]["model"] == "efficientnet_lite0"
    queued = [r["queued_at"] for r in recent]
    assert queued == sorted(queued, reverse=True)
    # Nothing that would let a viewer fetch or identify anyone's job.
    assert not _HEX32.search(reply.body), reply.body
    for secret in (b"secret-name", b"camera.jpg", b"upload:"):
        assert secret not in reply.body


# -- the gateway's /metrics ----------------------------------------------------------------------


@pytest.mark.broker
def test_gateway_metrics_count_jobs_reuse_and_rejections(service: Service) -> None:
    before = _metrics(service.base_url)
    for name, kind in GATEWAY_METRICS.items():
        assert before.types.get(name) == kind, name
        assert before.helps[name]
    labels = {"model": "efficientnet_lite0", "status": "succeeded"}

    job = api.submit(service.base_url, "efficientnet_lite0", "coffee.jpg")
    done = api.wait_final(service.base_url, job["job_id"])
    reused = api.submit(service.base_url, "efficientnet_lite0", "coffee.jpg", reuse=True)
    assert reused["reused_from"] is not None
    bad = api.post_json(
        service.base_url, "/classifications", {"model": "nope", "image": "coffee.jpg"}
    )
    assert bad.status == 422
    after = _metrics(service.base_url)

    assert after.value("imgq_gateway_jobs_total", **labels) == (
        before.value("imgq_gateway_jobs_total", **labels) + 2
    )
    for histogram in ("imgq_queue_wait_seconds", "imgq_end_to_end_seconds"):
        # The reused job is counted as a job but does not pull the latencies down.
        assert after.value(f"{histogram}_count") == before.value(f"{histogram}_count") + 1
    took = done["finished_at"] - done["queued_at"]
    assert after.value("imgq_end_to_end_seconds_sum") - before.value(
        "imgq_end_to_end_seconds_sum"
    ) == pytest.approx(took, abs=1e-3)
    assert after.value("imgq_result_reuse_total") == before.value("imgq_result_reuse_total") + 1
    rejected = "imgq_submissions_rejected_total"
    assert (
        after.value(rejected, reason="unknown_model")
        == before.value(rejected, reason="unknown_model") + 1
    )
    # HTTP requests by route pattern: the two polls of the job and the refused submission
    # (wait_final may poll more than once, so at least).
    polled = {"route": "/classifications/{job_id}", "method": "GET", "status": "200"}
    http = "imgq_http_requests_total"
    assert after.value(http, **polled) >= before.value(http, **polled) + 1
    refused = {"route": "/classifications", "method": "POST", "status": "422"}
    assert after.value(http, **refused) == before.value(http, **refused) + 1
    assert not [
        s for s in after.series(http) if ("route", f"/classifications/{job['job_id']}") in s
    ]
    # One series per work queue: the shared one and each offered model's (their depths are
    # checked where nothing consumes them).
    queues = {frozenset({("queue", name)}) for name in (REQUESTS_QUEUE, *map(model_queue, CATALOG))}
    assert queues <= set(after.series("imgq_queue_depth"))


@pytest.mark.broker
def test_long_polls_waiting_and_queue_depth_gauges(cluster: Cluster) -> None:
    # No replica: the job stays queued and the poll stays held until the job is cancelled.
    _, url = cluster.start_gateway()
    job = api.submit(url, MODEL, "coffee.jpg")
    # The broker confirmed the job before the 202, so the scrape finds it in the queue.
    assert _metrics(url).series("imgq_queue_depth") == {
        frozenset({("queue", WORK_QUEUE)}): 1,
        frozenset({("queue", REQUESTS_QUEUE)}): 0,
    }
    path = f"/classifications/{job['job_id']}?wait=30"
    poll = threading.Thread(target=api.get, args=(url, path))
    poll.start()
    deadline = time.monotonic() + 10
    while _metrics(url).value("imgq_long_polls_waiting") < 1:
        assert time.monotonic() < deadline, "the held long-poll never showed in the gauge"
        time.sleep(0.05)
    assert api.request(url, "DELETE", f"/classifications/{job['job_id']}").status == 200
    poll.join(10)
    assert not poll.is_alive()
    assert _metrics(url).value("imgq_long_polls_waiting") == 0


async def _depths(url: str, names: list[str]) -> dict[str, int | None]:
    connection = await aio_pika.connect(url)
    async with connection:
        depths = await queue_depths(connection, names)
        # The missing queues closed only the probe's channels, never the connection.
        assert not connection.is_closed
        return depths


@pytest.mark.broker
def test_queue_depths_survive_a_missing_queue(cluster: Cluster) -> None:
    # A per-model queue may not exist (yet): it is unknown, and the queues after it still answer.
    _, url = cluster.start_gateway()
    api.submit(url, MODEL, "coffee.jpg")
    names = [model_queue("nope"), WORK_QUEUE, "imgq.nope.too", WORK_QUEUE]
    assert asyncio.run(_depths(cluster.node.url, names)) == {
        model_queue("nope"): None,
        WORK_QUEUE: 1,
        "imgq.nope.too": None,
    }


# -- the replica's /metrics ----------------------------------------------------------------------


async def _redeliver_next_request(url: str) -> None:
    """Take the job at the head of the work queue and hand it back: it is now redelivered."""
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.get_queue(WORK_QUEUE)
        message = await queue.get(timeout=10)
        assert message is not None
        await message.nack(requeue=True)


async def _publish_garbage(url: str) -> None:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.get_exchange(REQUESTS_EXCHANGE)
        await exchange.publish(aio_pika.Message(b"not a request"), REQUEST_ROUTING_KEY)


@pytest.mark.broker
def test_replica_serves_its_own_metrics(cluster: Cluster) -> None:
    _, url = cluster.start_gateway()
    job = api.submit(url, MODEL, "coffee.jpg")
    asyncio.run(_redeliver_next_request(cluster.node.url))

    port = free_port()
    cluster.start_replica(IMGQ_METRICS_PORT=str(port))
    cluster.wait_replicas(1)
    assert api.wait_final(url, job["job_id"])["status"] == "succeeded"
    asyncio.run(_publish_garbage(cluster.node.url))

    replica_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    metrics = _metrics(replica_url)
    while metrics.value("imgq_replica_dead_lettered_total") < 1 and time.monotonic() < deadline:
        time.sleep(0.2)
        metrics = _metrics(replica_url)
    for name, kind in REPLICA_METRICS.items():
        assert metrics.types.get(name) == kind, name
    assert metrics.value("imgq_replica_jobs_total", model=MODEL, status="succeeded") == 1
    assert metrics.value("imgq_inference_seconds_count", model=MODEL) == 1
    assert metrics.value("imgq_inference_seconds_sum", model=MODEL) > 0
    assert metrics.value("imgq_batch_size_count", model=MODEL) == 1
    assert metrics.value("imgq_batch_size_sum", model=MODEL) == 1
    assert metrics.value("imgq_redeliveries_total") == 1
    assert metrics.value("imgq_replica_dead_lettered_total") == 1
    # The gateway turned the dead letter's notice into its own count too.
    deadline = time.monotonic() + 10
    while _metrics(url).value("imgq_gateway_dead_lettered_total") < 1:
        assert time.monotonic() < deadline, "the gateway did not count the dead letter"
        time.sleep(0.2)


# -- the pieces on their own ---------------------------------------------------------------------


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
