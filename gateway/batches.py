"""POST /batches and GET /batches/{batch_id}: many images for one model in one request.

Every image is checked before any job is published (all or nothing: a bad one is refused with
the status a single job would get, naming its index, and no job is created); then each goes
through ``Jobs.accept_all``, the same path as ``POST /classifications``, so result reuse, the
event log and owner scoping are those of single jobs.  A batch of N images counts as N
submissions against the client's rate limit.  With an ``Idempotency-Key``, image ``i`` is
submitted under the key ``<key>#<i>``: a retried batch gets the same jobs back (in a new
batch record).  The batch record itself lives in this gateway (``gateway/batch_store.py``).
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import orjson
from aiohttp import web

from gateway import keys
from gateway.batch_store import MAX_BATCH_IMAGES, Batch, BatchLimits, is_batch_id, new_batch_id
from gateway.store import JobStore
from gateway.submissions import Accepted, Submission
from gateway.uploads import Upload, read_batch_form
from gateway.views import (
    MAX_IDEMPOTENCY_KEY,
    _idempotency_key,
    _read_small_body,
    _wait_seconds,
    client_of,
    counts_rejections,
    json_response,
    offered,
)
from shared.errors import (
    BatchNotFound,
    EmptyBatch,
    ImgqError,
    JobGone,
    JobNotFound,
    MalformedRequest,
    PayloadTooLarge,
    UnknownModel,
    UnsupportedContentType,
)
from shared.messages import BatchRef, JobEvent
from shared.states import JobStatus

_JSON = "application/json"
_MULTIPART = "multipart/form-data"
_BATCH_TYPES = (_JSON, _MULTIPART)

Item = str | Upload
# Room in a job's key (MAX_IDEMPOTENCY_KEY) for the '#<index>' suffix of any image index
# below MAX_BATCH_IMAGES (batch_store.py): '#9999' is 5 characters.
MAX_BATCH_KEY = MAX_IDEMPOTENCY_KEY - len(f"#{MAX_BATCH_IMAGES - 1}")


@counts_rejections
async def submit_batch(request: web.Request) -> web.StreamResponse:
    limits = request.app[keys.SETTINGS].batch_limits
    model, items = await _read_batch(request, limits)
    if not isinstance(model, str):
        raise MalformedRequest("field 'model' is required and must be a string")
    if not items:
        raise EmptyBatch("a batch needs at least one image ('images' in JSON, or 'file' parts)")
    if model not in request.app[keys.SETTINGS].models:
        allowed = offered(request)
        if model not in allowed:
            raise UnknownModel(model, allowed)
    key = _idempotency_key(request)
    if key is not None and len(key) > MAX_BATCH_KEY:
        raise MalformedRequest(
            f"a batch's Idempotency-Key may have at most {MAX_BATCH_KEY} characters (each "
            "image's job is keyed '<key>#<index>')"
        )
    reuse = "no-cache" not in request.headers.get("Cache-Control", "")
    submissions = []
    # One at a time: a batch takes one of the upload-check threads, never all of them.
    for index, item in enumerate(items):
        try:
            submission = await _submission(request, model, item, reuse)
        except ImgqError as error:
            raise _about(error, index, item) from None
        if key is not None:
            submission = _with_key(submission, _image_key(key, index))
        submissions.append(submission)
    client = client_of(request)
    # The ID first: every job carries its place in the batch (its request and its events), so
    # any gateway can answer GET /batches/{id} from the event log, not only this one.
    batch_id = new_batch_id()
    submissions = [
        replace(s, batch=BatchRef(batch_id, index, len(submissions)))
        for index, s in enumerate(submissions)
    ]
    accepted = await request.app[keys.JOBS].accept_all(submissions, client)
    batch = request.app[keys.BATCHES].add(
        model, tuple(a.job.job_id for a in accepted), client.owner, batch_id=batch_id
    )
    store = request.app[keys.STORE]
    body = batch_body(batch, [a.job for a in accepted], _positions(store, accepted))
    return json_response(body, status=202, headers={"Location": _batch_path(batch.batch_id)})


async def _read_batch(request: web.Request, limits: BatchLimits) -> tuple[object, list[Item]]:
    if request.content_type == _MULTIPART:
        form = await read_batch_form(request, limits.max_images, limits.max_bytes)
        return form.model, form.images
    if request.content_type != _JSON:
        raise UnsupportedContentType(request.content_type, _BATCH_TYPES)
    raw = await _read_small_body(request)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MalformedRequest(f"body is not valid JSON: {exc}") from None
    if not isinstance(body, dict) or not isinstance(body.get("images"), list):
        raise MalformedRequest(
            'body must be a JSON object like {"model": ..., "images": ["name", ...]}'
        )
    images: list[object] = body["images"]
    if len(images) > limits.max_images:
        raise PayloadTooLarge(
            f"the batch has {len(images)} images; a batch has at most {limits.max_images}"
        )
    names: list[Item] = []
    for index, name in enumerate(images):
        if not isinstance(name, str):
            raise MalformedRequest(f"images[{index}] must be a gallery image name (a string)")
        names.append(name)
    return body.get("model"), names


async def _submission(request: web.Request, model: str, item: Item, reuse: bool) -> Submission:
    if isinstance(item, str):
        image = request.app[keys.GALLERY].get(item)
        return Submission(
            model,
            image.name,
            image.data,
            image.content_type,
            image_sha256=image.sha256,
            reuse=reuse,
        )
    content_type = await request.app[keys.IMAGE_CHECKS].media_type(item.data)
    return Submission(model, f"upload:{item.filename}", item.data, content_type, reuse=reuse)


def _with_key(submission: Submission, key: str) -> Submission:
    return Submission(
        submission.model,
        submission.image_name,
        submission.image,
        submission.content_type,
        image_sha256=submission.image_sha256,
        idempotency_key=key,
        reuse=submission.reuse,
    )


def _image_key(key: str, index: int) -> str:
    return f"{key}#{index}"


def _about(error: ImgqError, index: int, item: Item) -> ImgqError:
    """The same error (so the same status and code), its message naming the image."""
    name = item if isinstance(item, str) else f"file {item.filename!r}"
    error.message = f"images[{index}] ({name}): {error.message}"
    error.args = (error.message,)
    return error


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
    wait = _wait_seconds(request.query.get("wait"), settings.max_wait)
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


def batch_body(
    batch: Batch, jobs: list[JobEvent | None], positions: list[int | None]
) -> dict[str, Any]:
    """The batch: its jobs in the order of the images (those gone are listed by ID in
    ``gone``), how many are in each status, and whether all are final."""
    records = []
    gone = []
    counts = {status.value: 0 for status in JobStatus}
    for job_id, job, position in zip(batch.job_ids, jobs, positions, strict=True):
        if job is None:
            gone.append(job_id)
            continue
        counts[job.status.value] += 1
        record = job.to_dict()
        record["position"] = position if job.status is JobStatus.QUEUED else None
        records.append(record)
    return {
        "batch_id": batch.batch_id,
        "model": batch.model,
        "created_at": batch.created_at,
        # A batch read from the log before all its jobs' events arrived is not done yet.
        "done": batch.complete and all(job is None or job.status.is_final for job in jobs),
        "counts": counts,
        "jobs": records,
        "gone": gone,
    }


def _batch_path(batch_id: str) -> str:
    return f"/batches/{batch_id}"
