"""shared/metrics.py (the registry and its text format) and the replica's metrics listener.

Pure unit tests: no broker.  The services' metrics are checked end to end in
tests/test_status_metrics.py.
"""

from __future__ import annotations

import asyncio
import socket

import aiohttp
import pytest

from classifier_service.metrics import ReplicaMetrics, start_server
from compose.broker import free_port
from shared.metrics import CONTENT_TYPE, Registry
from tests.prometheus import parse


def test_counter_gauge_histogram_exposition() -> None:
    registry = Registry()
    jobs = registry.counter("imgq_things_total", "Things.", ("model", "status"))
    plain = registry.counter("imgq_plain_total", "Plain.")
    gauge = registry.gauge("imgq_waiting", "Waiting.")
    hist = registry.histogram("imgq_wait_seconds", "Waits.", (0.1, 1.0))
    jobs.inc(model="a", status="ok")
    jobs.inc(2, model="a", status="ok")
    jobs.inc(model="b", status="failed")
    gauge.set(4)
    for value in (0.05, 0.1, 0.5, 7.0):
        hist.observe(value)

    text = registry.expose().decode()
    assert text.splitlines()[:2] == [
        "# HELP imgq_things_total Things.",
        "# TYPE imgq_things_total counter",
    ]
    assert 'imgq_things_total{model="a",status="ok"} 3' in text
    assert "imgq_plain_total 0" in text  # an unlabelled metric shows from the start
    assert 'imgq_wait_seconds_bucket{le="0.1"} 2' in text  # le means "less or equal"
    assert 'imgq_wait_seconds_bucket{le="1"} 3' in text
    assert 'imgq_wait_seconds_bucket{le="+Inf"} 4' in text
    assert "imgq_wait_seconds_count 4" in text
    parsed = parse(text)
    assert parsed.value("imgq_things_total", model="b", status="failed") == 1
    assert parsed.value("imgq_waiting") == 4
    assert parsed.value("imgq_wait_seconds_sum") == pytest.approx(7.65)
    assert parsed.types == {
        "imgq_things_total": "counter",
        "imgq_plain_total": "counter",
        "imgq_waiting": "gauge",
        "imgq_wait_seconds": "histogram",
    }
    assert plain.value() == 0


def test_labelled_histogram_and_escaping() -> None:
    registry = Registry()
    hist = registry.histogram("imgq_seconds", "Help with a \\ and\na newline.", (1,), ("model",))
    hist.observe(0.5, model='we"ird\\name\n')
    text = registry.expose().decode()
    assert "# HELP imgq_seconds Help with a \\\\ and\\na newline." in text
    assert 'imgq_seconds_bucket{model="we\\"ird\\\\name\\n",le="1"} 1' in text
    parse(text)
    assert hist.count(model='we"ird\\name\n') == 1


def test_misuse_is_refused() -> None:
    registry = Registry()
    counter = registry.counter("imgq_x_total", "X.", ("model",))
    with pytest.raises(ValueError, match="takes labels"):
        counter.inc(status="ok")
    with pytest.raises(ValueError, match="cannot go down"):
        counter.inc(-1, model="a")
    with pytest.raises(ValueError, match="already registered"):
        registry.counter("imgq_x_total", "again")
    with pytest.raises(ValueError, match="_total"):
        registry.counter("imgq_x", "a counter without _total")


def test_the_replica_listener_serves_metrics() -> None:
    async def scenario() -> tuple[str, str]:
        metrics = ReplicaMetrics()
        metrics.batch_done("efficientnet_lite0", 3, 0.2)
        metrics.jobs.inc(model="efficientnet_lite0", status="succeeded")
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
    assert parsed.value("imgq_inference_seconds_count", model="efficientnet_lite0") == 1
    assert parsed.value("imgq_batch_size_sum") == 3
    assert parsed.value("imgq_jobs_total", model="efficientnet_lite0", status="succeeded") == 1
    assert parsed.value("imgq_redeliveries_total") == 0
    assert parsed.value("imgq_dead_lettered_total") == 0


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
