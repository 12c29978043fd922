"""shared/metrics.py, the gateway's and the replica's metrics on their own, the HTTP metrics
middleware, and the replica's metrics listener.

Pure unit tests: no broker.  The services' metrics are checked end to end in
tests/service/test_status_metrics.py.
"""

from __future__ import annotations

import asyncio
import socket

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from classifier_service.metrics import ReplicaMetrics, start_server
from compose.broker import free_port
from gateway import keys
from gateway.metrics import GatewayMetrics
from gateway.observe import UNMATCHED, observe_middleware
from gateway.problems import problem_middleware
from shared.errors import JobNotFound
from shared.metrics import CONTENT_TYPE, expose, new_registry
from tests.prometheus import parse

MODEL = "efficientnet_lite0"


def test_a_registry_carries_the_process_metrics() -> None:
    parsed = parse(expose(new_registry()).decode())
    assert parsed.types["process_resident_memory_bytes"] == "gauge"
    assert parsed.value("process_resident_memory_bytes") > 1_000_000
    assert parsed.types["process_cpu_seconds"] == "counter"
    assert parsed.value("process_cpu_seconds_total") > 0
    # At least stdin, stdout and stderr.
    assert parsed.value("process_open_fds") >= 3
    assert parsed.types["python_info"] == "gauge"


def test_each_service_object_has_a_registry_of_its_own() -> None:
    # The tests build many in one process: a shared (global) registry would refuse the
    # second set of names, or mix one's counts into another's.
    first, second = GatewayMetrics(), GatewayMetrics()
    first.result_reuse.inc()
    assert parse(expose(first.registry).decode()).value("imgq_result_reuse_total") == 1
    assert parse(expose(second.registry).decode()).value("imgq_result_reuse_total") == 0
    ReplicaMetrics()
    ReplicaMetrics()


def test_no_created_samples_beside_counters_and_histograms() -> None:
    metrics = ReplicaMetrics()
    metrics.batch_done(MODEL, 2, 0.1)
    metrics.job_done(MODEL, "succeeded")
    names = {name for name, _ in parse(expose(metrics.registry).decode()).samples}
    assert "imgq_replica_jobs_total" in names
    assert not [name for name in names if name.endswith("_created")]


def test_queue_depth_is_per_queue_and_drops_queues_the_broker_did_not_answer_for() -> None:
    metrics = GatewayMetrics()
    depths: dict[str, int | None] = {"imgq.requests": 3, "imgq.requests.model.a": 0}
    parsed = parse(metrics.expose(long_polls=0, queue_depths=depths).decode())
    assert parsed.types["imgq_queue_depth"] == "gauge"
    assert parsed.series("imgq_queue_depth") == {
        frozenset({("queue", "imgq.requests")}): 3,
        frozenset({("queue", "imgq.requests.model.a")}): 0,
    }
    # The broker is unreachable now: no depth rather than the last one, which would be stale.
    depths = {"imgq.requests": None, "imgq.requests.model.a": 5}
    parsed = parse(metrics.expose(long_polls=0, queue_depths=depths).decode())
    assert parsed.series("imgq_queue_depth") == {frozenset({("queue", "imgq.requests.model.a")}): 5}


def _http_app(metrics: GatewayMetrics) -> web.Application:
    async def job(request: web.Request) -> web.Response:
        if request.match_info["job_id"] == "missing":
            raise JobNotFound("no such job")
        return web.json_response({"job_id": request.match_info["job_id"]})

    async def broken(request: web.Request) -> web.Response:
        raise RuntimeError("a bug")

    app = web.Application(middlewares=[observe_middleware, problem_middleware])
    app[keys.METRICS] = metrics
    app.router.add_get("/classifications/{job_id}", job)
    app.router.add_get("/broken", broken)
    return app


def test_http_metrics_count_by_route_pattern_method_and_final_status() -> None:
    metrics = GatewayMetrics()

    async def scenario() -> None:
        async with TestServer(_http_app(metrics)) as server, aiohttp.ClientSession() as session:
            for path, method in [
                ("/classifications/a1", "GET"),
                ("/classifications/b2", "GET"),
                ("/classifications/missing", "GET"),
                ("/classifications/a1", "PUT"),
                ("/broken", "GET"),
                ("/no/such/path/1", "GET"),
                ("/no/such/path/2", "GET"),
            ]:
                async with session.request(method, server.make_url(path)) as response:
                    await response.read()

    asyncio.run(scenario())
    parsed = parse(expose(metrics.registry).decode())
    route = "/classifications/{job_id}"
    requests = "imgq_http_requests_total"
    assert parsed.types["imgq_http_requests"] == "counter"
    assert parsed.series(requests) == {
        frozenset({("route", route), ("method", "GET"), ("status", "200")}): 2,
        # The status the client got: the problem middleware's answer, counted outside it.
        frozenset({("route", route), ("method", "GET"), ("status", "404")}): 1,
        frozenset({("route", "/broken"), ("method", "GET"), ("status", "500")}): 1,
        # A method the route lacks, and paths no route matches: one label, whatever the path.
        frozenset({("route", UNMATCHED), ("method", "PUT"), ("status", "405")}): 1,
        frozenset({("route", UNMATCHED), ("method", "GET"), ("status", "404")}): 2,
    }
    duration = "imgq_http_request_duration_seconds"
    assert parsed.types[duration] == "histogram"
    assert parsed.value(f"{duration}_count", route=route) == 3
    assert parsed.value(f"{duration}_count", route=UNMATCHED) == 3
    assert parsed.value(f"{duration}_sum", route=route) > 0


def test_the_replica_listener_serves_metrics() -> None:
    async def scenario() -> tuple[str, str]:
        metrics = ReplicaMetrics()
        metrics.batch_done(MODEL, 3, 0.2)
        metrics.job_done(MODEL, "succeeded")
        port = free_port()
        runner = await start_server(metrics, "127.0.0.1", port)
        assert runner is not None
        try:
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"http://127.0.0.1:{port}/metrics") as response,
            ):
                assert response.status == 200
                return response.headers["Content-Type"], await response.text()
        finally:
            await runner.cleanup()

    content_type, text = asyncio.run(scenario())
    assert content_type == CONTENT_TYPE
    parsed = parse(text)
    assert parsed.value("imgq_inference_seconds_count", model=MODEL) == 1
    assert parsed.value("imgq_inference_seconds_sum", model=MODEL) == pytest.approx(0.2)
    # 0.2 s lands in the 0.25 s bucket (le = "less or equal"), not in 0.1 s.
    assert parsed.value("imgq_inference_seconds_bucket", model=MODEL, le="0.1") == 0
    assert parsed.value("imgq_inference_seconds_bucket", model=MODEL, le="0.25") == 1
    assert parsed.value("imgq_batch_size_sum", model=MODEL) == 3
    assert parsed.value("imgq_replica_jobs_total", model=MODEL, status="succeeded") == 1
    assert ("imgq_redeliveries_total", frozenset()) in parsed.samples
    assert parsed.value("imgq_replica_dead_lettered_total") == 0
    assert parsed.value("process_resident_memory_bytes") > 0


def test_the_replica_listener_is_optional_and_never_fatal() -> None:
    async def scenario() -> None:
        assert await start_server(ReplicaMetrics(), "127.0.0.1", 0) is None
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            # Another replica on this host has the port: this one works on without metrics.
            assert await start_server(ReplicaMetrics(), "127.0.0.1", port) is None

    asyncio.run(scenario())
