"""GET /classifications/{job_id}/events: a job's changes as server-sent events.

The keep-alive and shutdown behaviour in-process against the real handler and store (no
broker), with a short keep-alive interval (end to end on the session's service:
tests/service/test_events_sse.py)."""

from __future__ import annotations

import asyncio
import time
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
