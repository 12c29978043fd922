"""GET /classifications/{job_id}/events: a job's changes as server-sent events.

One ``event: job`` with the Job at once, then one on every status change, and the
stream ends after the final state.  Driven by the same waiters as the long-poll, so
no timer polls the store.  Each event's ``id`` is the job's status: a browser's
EventSource reconnects on its own when a stream ends and sends the last ID back, and
if that is already the final status it gets 204, which tells it to stop.
"""

from __future__ import annotations

import asyncio
from typing import Final

import orjson
from aiohttp import web

from gateway import keys
from gateway.answers import job_body
from gateway.context import client_of
from gateway.store import JobStore
from gateway.views import requested_job_id
from shared.errors import JobGone, JobNotFound
from shared.messages import JobEvent

# A comment line this often keeps proxies and load balancers (idle timeouts of 30-60 s are
# common) from cutting a stream whose job sits in the queue.
KEEPALIVE_SECONDS: Final = 15.0
_KEEPALIVE: Final = b": keep-alive\n\n"


async def job_events(request: web.Request) -> web.StreamResponse:
    job_id = requested_job_id(request)
    store = request.app[keys.STORE]
    client = client_of(request)
    job = store.get(job_id, client.owner)  # 404 / 410 as problems, before the stream starts
    if job.status.is_final and request.headers.get("Last-Event-ID") == job.status.value:
        return web.Response(status=204)
    waits = request.app[keys.OPEN_WAITS]
    with waits.hold(client):
        return await _stream(request, store, job, client.owner, waits.stream_seconds)


async def _stream(
    request: web.Request, store: JobStore, job: JobEvent, owner: str | None, lifetime: float
) -> web.StreamResponse:
    # A stream ends after ``lifetime`` even if its job never finishes (stuck in a queue no
    # replica serves): EventSource reconnects by itself, and a held connection is released.
    loop = asyncio.get_running_loop()
    ends = loop.time() + lifetime
    job_id = job.job_id
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            # nginx buffers responses by default, which would hold events back.
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)
    try:
        await response.write(_event(store, job))
        while not job.status.is_final and not store.released:
            remaining = ends - loop.time()
            if remaining <= 0:
                break
            try:
                current = await store.wait(
                    job_id, min(KEEPALIVE_SECONDS, remaining), since=job.status, owner=owner
                )
            except (JobGone, JobNotFound):
                break  # deleted or expired meanwhile: nothing more will come
            if current.status != job.status:
                job = current
                await response.write(_event(store, job))
            elif not store.released:
                await response.write(_KEEPALIVE)
        await response.write_eof()
    except ConnectionResetError:
        pass  # the client went away; nothing to tell it
    return response


def _event(store: JobStore, job: JobEvent) -> bytes:
    data = orjson.dumps(job_body(store, job))
    return b"event: job\nid: " + job.status.value.encode() + b"\ndata: " + data + b"\n\n"
