"""GET /classifications/{job_id}/events: a job's changes as server-sent events.

End to end on the session's service; the keep-alive and shutdown behaviour in-process
against the real handler and store (no broker), with a short keep-alive interval.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway import keys, sse
from gateway.clients import OpenWaits
from gateway.settings import GatewaySettings
from gateway.store import JobStore
from shared.messages import ClassifyRequest, JobEvent, new_job_id
from shared.states import JobStatus
from tests import api
from tests.cluster import MODEL, Cluster
from tests.conftest import Service
from tests.openapi_contract import assert_response_matches

PATH = "/classifications/{job_id}/events"


@dataclass
class Stream:
    status: int
    headers: dict[str, str]
    events: list[dict[str, str]] = field(default_factory=list)
    arrived: list[float] = field(default_factory=list)
    comments: int = 0
    raw: bytes = b""
    # Set when the first event has arrived: a test waits on it, never on a guess of how long
    # opening a stream takes.
    first_event: threading.Event = field(default_factory=threading.Event)

    @property
    def jobs(self) -> list[dict[str, Any]]:
        return [json.loads(event["data"]) for event in self.events]


def _parse_into(stream: Stream, lines: Any) -> None:
    current: dict[str, str] = {}
    for raw in lines:
        stream.raw += raw
        line = raw.decode().rstrip("\r\n")
        if not line:
            if current:
                stream.events.append(current)
                stream.arrived.append(time.monotonic())
                stream.first_event.set()
                current = {}
        elif line.startswith(":"):
            stream.comments += 1
        else:
            name, _, value = line.partition(":")
            current[name] = value.removeprefix(" ")
    assert not current, "the stream ended in the middle of an event"


def follow(
    base_url: str,
    job_id: str,
    headers: dict[str, str] | None = None,
    timeout: float = 90,
    opened: threading.Event | None = None,
) -> Stream:
    """Read the whole stream (it ends by itself after the final state).  ``opened`` is set
    once the first event has arrived (or the request failed)."""
    request = urllib.request.Request(f"{base_url}/classifications/{job_id}/events")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            stream = Stream(response.status, {k.lower(): v for k, v in response.headers.items()})
            if opened is not None:
                stream.first_event = opened
            _parse_into(stream, response)
            return stream
    except urllib.error.HTTPError as exc:
        return Stream(exc.code, {k.lower(): v for k, v in exc.headers.items()}, raw=exc.read())
    finally:
        if opened is not None:
            opened.set()


# -- through the running service ---------------------------------------------------------------


@pytest.mark.broker
def test_a_job_streams_queued_started_succeeded_then_closes(cluster: Cluster) -> None:
    # No replica until the stream is open: the job is surely still queued when it opens.
    _, url = cluster.start_gateway()
    job = api.submit(url, MODEL, "coffee.jpg")
    streams: list[Stream] = []
    opened = threading.Event()
    reader = threading.Thread(
        target=lambda: streams.append(follow(url, job["job_id"], opened=opened))
    )
    reader.start()
    assert opened.wait(60), "the stream's first event never came"
    replica_started = time.monotonic()
    cluster.start_replica()
    reader.join(120)
    stream = streams[0]

    assert stream.status == 200
    assert stream.headers["content-type"].startswith("text/event-stream")
    assert stream.headers["cache-control"] == "no-cache"
    assert [e["event"] for e in stream.events] == ["job"] * len(stream.events)
    statuses = [j["status"] for j in stream.jobs]
    assert statuses == ["queued", "started", "succeeded"], statuses
    assert [e["id"] for e in stream.events] == statuses
    for body in stream.jobs:
        assert body["job_id"] == job["job_id"]
        assert_response_matches(PATH.removesuffix("/events"), "get", 200, "application/json", body)
    assert stream.jobs[-1]["result"][0]["label"] == "espresso"
    assert_response_matches(PATH, "get", 200, stream.headers["content-type"], stream.raw)
    # Pushed as they happened, not at the end: the first event came before there was any
    # replica to finish the job, the others after.
    assert stream.arrived[0] < replica_started < stream.arrived[1]


@pytest.mark.broker
def test_a_finished_job_gives_one_event_and_a_reconnect_gets_204(service: Service) -> None:
    job = api.submit(service.base_url, "efficientnet_lite0", "cat.jpg")
    api.wait_final(service.base_url, job["job_id"])
    stream = follow(service.base_url, job["job_id"])
    assert stream.status == 200
    assert [j["status"] for j in stream.jobs] == ["succeeded"]
    # EventSource reconnects when a stream ends, sending the last id: 204 tells it to stop.
    again = follow(service.base_url, job["job_id"], {"Last-Event-ID": "succeeded"})
    assert again.status == 204
    assert again.events == []
    # An id from before the end gets the stream again.
    assert follow(service.base_url, job["job_id"], {"Last-Event-ID": "started"}).status == 200


@pytest.mark.broker
def test_a_cancelled_job_streams_cancelled(cluster: Cluster) -> None:
    # A gateway and no replica: the job stays queued until it is cancelled, whatever the timing.
    _, url = cluster.start_gateway()
    job = api.submit(url, MODEL, "camera.jpg")
    result: list[Stream] = []
    opened = threading.Event()
    reader = threading.Thread(
        target=lambda: result.append(follow(url, job["job_id"], opened=opened))
    )
    reader.start()
    assert opened.wait(60), "the stream's first event never came"
    deleted = api.request(url, "DELETE", f"/classifications/{job['job_id']}")
    assert deleted.status == 200, deleted.body
    reader.join(30)
    assert [j["status"] for j in result[0].jobs] == ["queued", "cancelled"]


@pytest.mark.broker
def test_unknown_and_gone_jobs_are_problems(service: Service) -> None:
    stream = follow(service.base_url, new_job_id())
    assert stream.status == 404
    body = json.loads(stream.raw)
    assert body["code"] == "job_not_found"
    assert_response_matches(PATH, "get", 404, stream.headers["content-type"], body)

    job = api.submit(service.base_url, "efficientnet_lite0", "cat.jpg")
    api.wait_final(service.base_url, job["job_id"])
    assert (
        api.request(service.base_url, "DELETE", f"/classifications/{job['job_id']}").status == 204
    )
    stream = follow(service.base_url, job["job_id"])
    assert stream.status == 410
    assert json.loads(stream.raw)["code"] == "job_gone"


# -- the handler in-process: keep-alive, deletion and shutdown -----------------------------------


def _queued() -> JobEvent:
    request = ClassifyRequest(new_job_id(), "efficientnet_lite0", "cat.jpg", time.time(), image=b"")
    return JobEvent.for_request(request, JobStatus.QUEUED)


async def _lines_until(content: Any, wanted: bytes) -> bytes:
    seen = b""
    while wanted not in seen:
        line = await asyncio.wait_for(content.readline(), 5)
        assert line, f"stream ended before {wanted!r}; got {seen!r}"
        seen += line
    return seen


def test_keep_alive_comments_while_nothing_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sse, "KEEPALIVE_SECONDS", 0.05)

    async def scenario() -> None:
        store = JobStore(ttl=60, max_jobs=10)
        job = _queued()
        store.apply(job)
        async with _client(store) as client:
            response = await client.get(f"/classifications/{job.job_id}/events")
            assert response.status == 200
            await _lines_until(response.content, b"id: queued")
            await _lines_until(response.content, b": keep-alive\n")
            await _lines_until(response.content, b": keep-alive\n")
            store.apply(job.advance(JobStatus.STARTED, started_at=time.time(), replica="r"))
            await _lines_until(response.content, b"id: started")
            store.apply(job.advance(JobStatus.SUCCEEDED, finished_at=time.time()))
            rest = await asyncio.wait_for(response.content.read(), 5)
            assert b"id: succeeded" in rest
            assert response.content.at_eof()

    asyncio.run(scenario())


def test_deletion_and_shutdown_end_the_stream() -> None:
    async def scenario() -> None:
        store = JobStore(ttl=60, max_jobs=10)
        deleted, waiting = _queued(), _queued()
        store.apply(deleted)
        store.apply(waiting)
        async with _client(store) as client:
            first = await client.get(f"/classifications/{deleted.job_id}/events")
            second = await client.get(f"/classifications/{waiting.job_id}/events")
            await _lines_until(first.content, b"id: queued")
            await _lines_until(second.content, b"id: queued")
            store.forget(deleted.job_id)
            assert b"event:" not in await asyncio.wait_for(first.content.read(), 5)
            store.release_all()  # what the gateway does on shutdown
            assert b"event:" not in await asyncio.wait_for(second.content.read(), 5)
            assert store.waiting == 0

    asyncio.run(scenario())


class _client:
    """The SSE route alone, on a real aiohttp server, around ``store``."""

    def __init__(self, store: JobStore) -> None:
        app = web.Application()
        app[keys.STORE] = store
        # The handler only asks the broker whether the event log has been replayed.
        app[keys.BROKER] = SimpleNamespace(replayed=True)  # type: ignore[misc]
        app[keys.OPEN_WAITS] = OpenWaits(per_client=10)
        app[keys.SETTINGS] = GatewaySettings.from_env({})
        app.router.add_get("/classifications/{job_id}/events", sse.job_events)
        self._client = TestClient(TestServer(app))

    async def __aenter__(self) -> TestClient[web.Request, web.Application]:
        await self._client.start_server()
        return self._client

    async def __aexit__(self, *exc: object) -> None:
        await self._client.close()
