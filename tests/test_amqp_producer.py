"""Producers on the broker: examples/amqp_producer.py against the running service, and
docs/asyncapi.yaml against the real messages."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import time
from functools import cache
from types import ModuleType
from typing import Any

import aio_pika
import orjson
import pytest
import yaml
from jsonschema import Draft7Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

from shared import wire
from shared.messages import (
    BatchRef,
    ClassifyRequest,
    CrashReport,
    EventBatch,
    JobEvent,
    ReplicaHeartbeat,
    new_job_id,
)
from shared.states import JobStatus
from shared.topology import (
    DEAD_LETTER_QUEUE,
    EVENTS_EXCHANGE,
    EVENTS_ROUTING_KEY,
    HEARTBEAT_ROUTING_KEY,
    MODEL_ROUTER,
    REQUEST_ROUTING_KEY,
    REQUESTS_EXCHANGE,
    REQUESTS_QUEUE,
    UNROUTED_EXCHANGE,
    model_queue,
)
from tests import api
from tests.conftest import REPO, Service

MODEL = "efficientnet_lite0"
COFFEE = (REPO / "images" / "coffee.jpg").read_bytes()
ASYNCAPI = REPO / "docs" / "asyncapi.yaml"


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


# -- the example producer, on the real service ------------------------------------------------


@pytest.mark.broker
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


@pytest.mark.broker
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


@pytest.mark.broker
def test_an_unknown_model_gets_a_failed_reply(service: Service) -> None:
    [event] = asyncio.run(
        producer.classify(service.broker_url, "resnet9000", [("coffee.jpg", COFFEE)], timeout=60)
    )
    assert event.status is JobStatus.FAILED
    assert event.error is not None
    assert event.error.code == "unknown_model"
    assert _http_job(service.base_url, event.job_id)["error"]["code"] == "unknown_model"


# -- docs/asyncapi.yaml ----------------------------------------------------------------------


@cache
def _document() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(ASYNCAPI.read_text(encoding="utf-8"))
    return document


def _validator(schema_name: str) -> Draft7Validator:
    resource = Resource.from_contents(_document(), default_specification=DRAFT7)
    registry: Registry[Any] = Registry().with_resource("urn:imgq:asyncapi", resource)
    schema = {"$ref": f"urn:imgq:asyncapi#/components/schemas/{schema_name}"}
    return Draft7Validator(schema, registry=registry)


def _errors(schema_name: str, body: bytes | dict[str, Any]) -> list[str]:
    instance = orjson.loads(body) if isinstance(body, bytes) else body
    return [error.message for error in _validator(schema_name).iter_errors(instance)]


def _properties(schema_name: str) -> set[str]:
    return set(_document()["components"]["schemas"][schema_name]["properties"])


def test_asyncapi_names_the_real_topology() -> None:
    document = _document()
    assert document["asyncapi"].startswith("3.")
    channels = document["channels"]
    requests = channels["requests"]
    assert requests["address"] == REQUEST_ROUTING_KEY
    assert requests["bindings"]["amqp"]["exchange"] == {
        "name": REQUESTS_EXCHANGE,
        "type": "direct",
        "durable": True,
        "autoDelete": False,
        "vhost": "/",
    }
    # Per-model queues: the router, each model's queue, the fallback to the shared queue.
    router = channels["modelRouter"]["bindings"]["amqp"]
    assert (router["is"], router["exchange"]["name"]) == ("routingKey", MODEL_ROUTER)
    assert router["exchange"]["type"] == "headers"
    unrouted = channels["unroutedExchange"]["bindings"]["amqp"]
    assert (unrouted["is"], unrouted["exchange"]["name"]) == ("routingKey", UNROUTED_EXCHANGE)
    assert unrouted["exchange"]["type"] == "fanout"
    model_channel = channels["modelRequests"]
    assert model_channel["address"] == model_queue("{model}")
    assert set(model_channel["parameters"]) == {"model"}
    assert model_channel["bindings"]["amqp"]["queue"]["name"] == model_queue("{model}")
    shared = channels["unroutedRequests"]
    assert shared["address"] == shared["bindings"]["amqp"]["queue"]["name"] == REQUESTS_QUEUE
    for name in ("jobEvents", "jobEventBatches", "jobForgotten", "heartbeats"):
        exchange = channels[name]["bindings"]["amqp"]["exchange"]
        assert (exchange["name"], exchange["type"]) == (EVENTS_EXCHANGE, "topic")
    assert channels["jobEventBatches"]["address"] == EVENTS_ROUTING_KEY
    assert channels["heartbeats"]["address"] == HEARTBEAT_ROUTING_KEY
    assert channels["deadLetters"]["address"] == DEAD_LETTER_QUEUE
    statuses = [s.value for s in JobStatus]
    assert channels["jobEvents"]["parameters"]["status"]["enum"] == statuses
    assert document["components"]["schemas"]["JobStatus"]["enum"] == statuses
    # Every $ref points somewhere; the v2 request's payload is the image bytes themselves.
    for message in document["components"]["messages"].values():
        for part in ("payload", "headers"):
            if "$ref" in message.get(part, {}):
                assert message[part]["$ref"].rsplit("/", 1)[-1] in document["components"]["schemas"]
    request = document["components"]["messages"]["ClassifyRequest"]
    assert request["payload"] == {
        "type": "string",
        "format": "binary",
        "description": "The encoded image bytes.",
    }


def test_asyncapi_payloads_match_the_messages_field_for_field() -> None:
    request = ClassifyRequest(
        new_job_id(),
        MODEL,
        "coffee.jpg",
        time.time(),
        idempotency_key="k-1",
        owner="o",
        batch=BatchRef(new_job_id(), 3, 50),
        callback="https://example.com/imgq",
        image=COFFEE,
    )
    headers = dict(wire.request_message(request).message.headers or {})
    assert _errors("ClassifyRequestHeaders", headers) == []
    # Every header a request can carry, but the trace context: a sender adds that only while
    # tracing (tests/test_tracing.py checks those headers on real messages).
    assert _properties("ClassifyRequestHeaders") - {"traceparent", "tracestate"} == set(headers)
    event = JobEvent.for_request(request, JobStatus.QUEUED)
    assert _errors("JobEvent", event.to_json()) == []
    ran = event.advance(JobStatus.SUCCEEDED, model_version="1")
    assert _errors("JobEvent", ran.to_json()) == []
    assert _properties("JobEvent") == set(orjson.loads(event.to_json()))

    traced = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    started = event.advance(JobStatus.STARTED, started_at=time.time(), replica="replica-1")
    batch = wire.events_message(EventBatch((event, started), (traced, {}))).message.body
    assert _errors("JobEventBatch", batch) == []
    assert _properties("JobEventBatch") == set(orjson.loads(batch))
    for entry in orjson.loads(batch)["events"]:
        assert set(entry) - {"traceparent"} == _properties("JobEvent")
    assert _errors("JobEventBatch", {"v": 2, "events": []})
    assert _errors("JobEventBatch", {"v": 2, "events": [{**orjson.loads(event.to_json()), "v": 9}]})

    forgotten = wire.forgotten_message(request.job_id).message.body
    assert _errors("JobForgotten", forgotten) == []
    assert _properties("JobForgotten") == set(orjson.loads(forgotten))

    beat = ReplicaHeartbeat("replica-1", (MODEL,), 3, False, 5.0, time.time())
    body = wire.heartbeat_message(beat).message.body
    assert _errors("ReplicaHeartbeat", body) == []
    assert _properties("ReplicaHeartbeat") == set(orjson.loads(body))

    report = CrashReport("replica-1", "life", (request.job_id,), time.time())
    body = wire.crash_report_message(report).message.body
    assert _errors("CrashReport", body) == []
    assert _properties("CrashReport") == set(orjson.loads(body))


def test_asyncapi_schemas_refuse_what_the_parsers_refuse() -> None:
    request = ClassifyRequest(new_job_id(), MODEL, "c.jpg", 1.0, image=b"\xff\xd8")
    good = dict(wire.request_message(request).message.headers or {})
    for change in (
        {"v": 1},
        {"model": ""},
        {"model": "m" * 201},
        {"queued_at_us": 1.5},
        {"queued_at_us": "now"},
    ):
        assert _errors("ClassifyRequestHeaders", {**good, **change}), change
    without_model = {k: v for k, v in good.items() if k != "model"}
    assert _errors("ClassifyRequestHeaders", without_model)


def test_asyncapi_examples_are_valid() -> None:
    messages = _document()["components"]["messages"]
    checked = 0
    for message in messages.values():
        schema_name = message["payload"].get("$ref", "").rsplit("/", 1)[-1]
        for example in message.get("examples", []):
            if "headers" in example:
                headers_schema = message["headers"]["$ref"].rsplit("/", 1)[-1]
                assert _errors(headers_schema, example["headers"]) == [], example["name"]
            if "payload" in example:
                assert _errors(schema_name, example["payload"]) == [], example["name"]
            checked += 1
    assert checked >= 4


@pytest.mark.broker
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
    assert _errors("ClassifyRequestHeaders", headers) == []
    assert set(headers) <= _properties("ClassifyRequestHeaders")
    assert _errors("JobEvent", reply.body) == []
    assert set(orjson.loads(reply.body)) == _properties("JobEvent")
    assert orjson.loads(reply.body)["status"] == "succeeded"
