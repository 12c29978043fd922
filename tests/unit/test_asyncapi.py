"""docs/asyncapi.yaml against the real messages: the topology it names, each message's fields,
what its schemas refuse, and its examples (a real request and reply on the broker:
tests/service/test_amqp_producer.py)."""

from __future__ import annotations

import time

import orjson

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
from tests.asyncapi_schemas import asyncapi_document, schema_errors, schema_properties
from tests.conftest import REPO

MODEL = "efficientnet_lite0"
COFFEE = (REPO / "images" / "coffee.jpg").read_bytes()


def test_asyncapi_names_the_real_topology() -> None:
    document = asyncapi_document()
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
    assert schema_errors("ClassifyRequestHeaders", headers) == []
    # Every header a request can carry, but the trace context: a sender adds that only while
    # tracing (tests/service/test_tracing.py checks those headers on real messages).
    assert schema_properties("ClassifyRequestHeaders") - {
        "traceparent",
        "tracestate",
    } == set(headers)
    event = JobEvent.for_request(request, JobStatus.QUEUED)
    assert schema_errors("JobEvent", event.to_json()) == []
    ran = event.advance(JobStatus.SUCCEEDED, model_version="1")
    assert schema_errors("JobEvent", ran.to_json()) == []
    assert schema_properties("JobEvent") == set(orjson.loads(event.to_json()))

    traced = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    started = event.advance(JobStatus.STARTED, started_at=time.time(), replica="replica-1")
    batch = wire.events_message(EventBatch((event, started), (traced, {}))).message.body
    assert schema_errors("JobEventBatch", batch) == []
    assert schema_properties("JobEventBatch") == set(orjson.loads(batch))
    for entry in orjson.loads(batch)["events"]:
        assert set(entry) - {"traceparent"} == schema_properties("JobEvent")
    assert schema_errors("JobEventBatch", {"v": 2, "events": []})
    assert schema_errors(
        "JobEventBatch", {"v": 2, "events": [{**orjson.loads(event.to_json()), "v": 9}]}
    )

    forgotten = wire.forgotten_message(request.job_id).message.body
    assert schema_errors("JobForgotten", forgotten) == []
    assert schema_properties("JobForgotten") == set(orjson.loads(forgotten))

    beat = ReplicaHeartbeat("replica-1", (MODEL,), 3, False, 5.0, time.time())
    body = wire.heartbeat_message(beat).message.body
    assert schema_errors("ReplicaHeartbeat", body) == []
    assert schema_properties("ReplicaHeartbeat") == set(orjson.loads(body))

    report = CrashReport("replica-1", "life", (request.job_id,), time.time())
    body = wire.crash_report_message(report).message.body
    assert schema_errors("CrashReport", body) == []
    assert schema_properties("CrashReport") == set(orjson.loads(body))


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
        assert schema_errors("ClassifyRequestHeaders", {**good, **change}), change
    without_model = {k: v for k, v in good.items() if k != "model"}
    assert schema_errors("ClassifyRequestHeaders", without_model)


def test_asyncapi_examples_are_valid() -> None:
    messages = asyncapi_document()["components"]["messages"]
    checked = 0
    for message in messages.values():
        schema_name = message["payload"].get("$ref", "").rsplit("/", 1)[-1]
        for example in message.get("examples", []):
            if "headers" in example:
                headers_schema = message["headers"]["$ref"].rsplit("/", 1)[-1]
                assert schema_errors(headers_schema, example["headers"]) == [], example["name"]
            if "payload" in example:
                assert schema_errors(schema_name, example["payload"]) == [], example["name"]
            checked += 1
    assert checked >= 4
