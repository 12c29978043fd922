"""POST /batches and GET /batches/{batch_id}: many images for one model in one request.

A batch comes in through ``gateway/intake.py``, the same path as ``POST /classifications`` (a
single job is a batch of one): every image is checked before any job is published (all or
nothing: a bad one is refused with the status a single job would get, naming its index, and no
job is created), so result reuse, the event log and owner scoping are those of single jobs.  A
batch of N images takes N seats of the client's share.  With an ``Idempotency-Key``, image
``i`` is submitted under the key ``<key>#<i>``: a retried batch gets the same jobs back (in a
new batch record).  The batch record itself lives in this gateway (``gateway/batch_store.py``).
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from gateway import intake, keys
from gateway.answers import batch_body
from gateway.batch_store import Batch, created_at, is_batch_id
from gateway.context import client_of
from gateway.shapes import BATCH
from gateway.store import JobStore
from gateway.submissions import Accepted
from gateway.views import counts_rejections, json_response, wait_seconds
from shared.errors import BatchNotFound, JobGone, JobNotFound
from shared.messages import JobEvent


@counts_rejections
async def submit_batch(request: web.Request) -> web.StreamResponse:
    taken = await intake.take(request, BATCH)
    assert taken.batch_id is not None  # the batch shape always gives one
    batch = request.app[keys.BATCHES].add(
        taken.model,
        tuple(a.job.job_id for a in taken.accepted),
        taken.client.owner,
        batch_id=taken.batch_id,
        created_at=created_at(a.job for a in taken.accepted),
    )
    store = request.app[keys.STORE]
    body = batch_body(batch, [a.job for a in taken.accepted], _positions(store, taken.accepted))
    return json_response(body, status=202, headers={"Location": _batch_path(batch.batch_id)})


def _positions(store: JobStore, accepted: list[Accepted]) -> list[int | None]:
    """Queue positions without walking the queue: the batch's jobs were queued last, in
    order, so each is the newest's position less the batch's queued jobs after it."""
    positions: list[int | None] = []
    later = 0
    for item in reversed(accepted):
        position = store.position_if_newest(item.job.job_id) if item.newest else None
        positions.append(None if position is None else position - later)
        if position is not None:
            later += 1
    return positions[::-1]


async def batch_status(request: web.Request) -> web.Response:
    batch_id = request.match_info["batch_id"]
    if not is_batch_id(batch_id):
        raise BatchNotFound(batch_id)
    settings = request.app[keys.SETTINGS]
    store = request.app[keys.STORE]
    wait = wait_seconds(request.query.get("wait"), settings.max_wait)
    client = client_of(request)
    batch = request.app[keys.BATCHES].get(batch_id, client.owner)
    if wait == 0:
        jobs = [_current(store, job_id, batch.owner) for job_id in batch.job_ids]
    else:
        # One held connection for the whole batch, counted as one long-poll.
        with request.app[keys.OPEN_WAITS].hold(client):
            jobs = await _wait_all(store, batch, wait)
    positions = [None if job is None else store.position(job.job_id) for job in jobs]
    return json_response(batch_body(batch, jobs, positions))


def _current(store: JobStore, job_id: str, owner: str | None) -> JobEvent | None:
    try:
        return store.get(job_id, owner)
    except (JobGone, JobNotFound):
        return None


async def _wait_all(store: JobStore, batch: Batch, seconds: float) -> list[JobEvent | None]:
    """Every job once all are final, or as they stand after ``seconds``: each wait returns as
    soon as its job is final, so waiting on them in turn ends when the last one does."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    jobs: list[JobEvent | None] = []
    for job_id in batch.job_ids:
        try:
            remaining = max(0.0, deadline - loop.time())
            jobs.append(await store.wait(job_id, remaining, owner=batch.owner))
        except (JobGone, JobNotFound):
            jobs.append(None)
    return jobs


def _batch_path(batch_id: str) -> str:
    return f"/batches/{batch_id}"
