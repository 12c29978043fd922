"""Producers on the broker: examples/amqp_producer.py against the running service, and the
request and reply it exchanges against docs/asyncapi.yaml (the rest of the document:
tests/unit/test_asyncapi.py)."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import time
from types import ModuleType
from typing import Any

import aio_pika
import orjson

from shared.messages import (
    JobEvent,
)
from shared.states import JobStatus
from shared.topology import (
    REQUEST_ROUTING_KEY,
    REQUESTS_EXCHANGE,
)
from tests import api
from tests.asyncapi_schemas import schema_errors, schema_properties
from tests.conftest import REPO, Service

MODEL = "efficientnet_lite0"
COFFEE = (REPO / "images" / "coffee.jpg").read_bytes()


def _load_example() -> ModuleType:
    path = REPO / "examples" / "amqp_producer.py"
    spec = importlib.util.spec_from_file_location("amqp_producer", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


producer = _load_example()


def _http_job(base_url: str, job_id: str, timeout: float = 30.0) -> dict[str, Any]:
    """The job over HTTP once final (404 until a gateway has seen an event for it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reply = api.get(base_url, f"/classifications/{job_id}?wait=5")
        if reply.status == 200 and reply.json()["status"] in ("succeeded", "failed"):
            job: dict[str, Any] = reply.json()
            return job
        assert reply.status in (200, 404, 503), (reply.status, reply.body)
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} not final over HTTP after {timeout} s")


def test_classify_gets_the_reply_and_http_shows_the_same_job(service: Service) -> None:
    events = asyncio.run(
        producer.classify(service.broker_url, MODEL, [("coffee.jpg", COFFEE)], timeout=120)
    )
    [event] = events
    assert isinstance(event, JobEvent)
    assert event.status is JobStatus.SUCCEEDED
    assert event.result is not None
    assert event.result[0].label == "espresso"
    assert (event.model, event.image) == (MODEL, "coffee.jpg")

    job = _http_job(service.base_url, event.job_id)
    assert job["status"] == "succeeded"
    expected = orjson.loads(event.to_json())
    for key in (
        "job_id",
        "model",
        "model_version",
        "image",
        "result",
        "replica",
        "started_at",
        "finished_at",
    ):
        assert job[key] == expected[key], key
    assert job["model_version"] == "1"


def test_replies_carry_the_correlation_id_and_match_their_jobs(service: Service) -> None:
    images = ["coffee.jpg", "cat.jpg", "rocket.jpg"]

    async def scenario() -> list[tuple[str, Any]]:
        async with producer.Producer(service.broker_url) as p:
            job_ids = [
                await p.submit(MODEL, name, (REPO / "images" / name).read_bytes())
                for name in images
            ]
            async with asyncio.timeout(120):
                # Awaited in reverse order: each reply is routed by its correlation ID.
                replies = [await p.reply(job_id) for job_id in reversed(job_ids)]
            return list(zip(reversed(job_ids), replies, strict=True))

    outcomes = asyncio.run(scenario())
    for job_id, reply in outcomes:
        assert reply.correlation_id == job_id
        assert reply.message_id == job_id
        assert reply.event.job_id == job_id
        assert reply.event.status is JobStatus.SUCCEEDED
    by_image = {reply.event.image: reply.event for _, reply in outcomes}
    assert set(by_image) == set(images)
    assert by_image["coffee.jpg"].result[0].label == "espresso"


def test_an_unknown_model_gets_a_failed_reply(service: Service) -> None:
    [event] = asyncio.run(
        producer.classify(service.broker_url, "resnet9000", [("coffee.jpg", COFFEE)], timeout=60)
    )
    assert event.status is JobStatus.FAILED
    assert event.error is not None
    assert event.error.code == "unknown_model"
    assert _http_job(service.base_url, event.job_id)["error"]["code"] == "unknown_model"


def test_asyncapi_accepts_a_real_request_and_a_real_reply(service: Service) -> None:
    async def scenario() -> tuple[bytes, Any]:
        # A queue of our own on the requests exchange gets a copy of what the example publishes.
        connection = await aio_pika.connect(service.broker_url)
        async with connection:
            channel = await connection.channel()
            requests = await channel.get_exchange(REQUESTS_EXCHANGE)
            copies = await channel.declare_queue(exclusive=True, auto_delete=True)
            await copies.bind(requests, REQUEST_ROUTING_KEY)
            async with producer.Producer(service.broker_url) as p:
                job_id = await p.submit(MODEL, "coffee.jpg", COFFEE)
                async with asyncio.timeout(120):
                    reply = await p.reply(job_id)
            copy = await copies.get(timeout=10, no_ack=True)
            assert copy is not None
            assert copy.message_id == job_id
            assert copy.reply_to is not None
            assert copy.correlation_id == job_id
            assert copy.content_type == "application/octet-stream"
            assert copy.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
            assert copy.type == "classify.request"
            assert copy.body == COFFEE  # the file's bytes, unchanged
            return dict(copy.headers or {}), reply

    headers, reply = asyncio.run(scenario())
    assert schema_errors("ClassifyRequestHeaders", headers) == []
    assert set(headers) <= schema_properties("ClassifyRequestHeaders")
    assert schema_errors("JobEvent", reply.body) == []
    assert set(orjson.loads(reply.body)) == schema_properties("JobEvent")
    assert orjson.loads(reply.body)["status"] == "succeeded"
