"""HTTP handlers.  Errors are raised as ``ImgqError`` and turned into problems in one place."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from gateway import intake, keys, siblings
from gateway.answers import job_body
from gateway.context import client_of, offered
from gateway.limits import MAX_PIXELS, MAX_UPLOAD_BYTES
from gateway.settings import GatewaySettings
from gateway.shapes import FORM_TYPES, SINGLE
from gateway.store import JobStore
from gateway.submissions import Accepted
from shared.errors import (
    ImgqError,
    JobNotFound,
    MalformedRequest,
    NotFound,
    NotReady,
    Unresponsive,
)
from shared.messages import is_job_id
from shared.states import JobStatus

STATIC_DIR = Path(__file__).resolve().parent / "static"
OPENAPI_FILE = Path(__file__).resolve().parent / "openapi.json"


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(data), content_type="application/json", headers=headers
    )


async def info(request: web.Request) -> web.Response:
    settings = request.app[keys.SETTINGS]
    replicas = request.app[keys.REPLICAS]
    # One entry per name (what a job naming no version gets), with every version on offer.
    by_name: dict[str, dict[str, Any]] = {}
    for model_id, model in offered(request).items():
        entry = by_name.setdefault(
            model.name,
            {
                "name": model.name,
                "title": model.title,
                "input_size": model.input_size,
                "online": replicas.serving(model.name) > 0,
                "replicas": replicas.serving(model.name),
                "version": None,
                "precision": model.precision,
                "versions": [],
            },
        )
        if model_id == model.name:
            entry.update(
                title=model.title,
                input_size=model.input_size,
                version=model.version,
                precision=model.precision,
            )
        else:
            serving = replicas.serving(model_id)
            entry["versions"].append(
                {
                    "id": model_id,
                    "version": model.version,
                    "title": model.title,
                    "input_size": model.input_size,
                    "precision": model.precision,
                    "online": serving > 0,
                    "replicas": serving,
                }
            )
    images = [
        {
            "name": image.name,
            "url": f"/images/{image.name}",
            "content_type": image.content_type,
            "width": image.width,
            "height": image.height,
        }
        for image in request.app[keys.GALLERY]
    ]
    return json_response(
        {
            "models": list(by_name.values()),
            "images": images,
            "max_wait": settings.max_wait,
            "limits": limits(settings),
        }
    )


def limits(settings: GatewaySettings) -> dict[str, float]:
    """What a client may send, as GET /info publishes it (clients size their requests by it)."""
    return {
        "max_wait": settings.max_wait,
        "upload_max_bytes": MAX_UPLOAD_BYTES,
        "upload_max_pixels": MAX_PIXELS,
        "batch_max_images": settings.batch_limits.max_images,
        "batch_max_bytes": settings.batch_limits.max_bytes,
    }


Submitter = Callable[[web.Request], Awaitable[web.StreamResponse]]


def counts_rejections(handler: Submitter) -> Submitter:
    """A submission route whose refusals are counted by reason
    (imgq_submissions_rejected_total): single jobs and batches alike."""

    @functools.wraps(handler)
    async def counted(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except ImgqError as error:
            request.app[keys.METRICS].rejected.labels(reason=error.code).inc()
            raise

    return counted


@counts_rejections
async def submit(request: web.Request) -> web.StreamResponse:
    """POST /classifications: one job, through the same intake as a batch."""
    [accepted] = (await intake.take(request, SINGLE)).accepted
    return _accepted(request, request.app[keys.STORE], accepted)


def _accepted(request: web.Request, store: JobStore, accepted: Accepted) -> web.StreamResponse:
    location = f"/classifications/{accepted.job.job_id}"
    if request.content_type in FORM_TYPES and "text/html" in request.headers.get("Accept", ""):
        raise web.HTTPSeeOther(location)
    headers = {"Location": location}
    if accepted.replayed:
        headers["Idempotent-Replayed"] = "true"
    body = job_body(store, accepted.job, newest=accepted.newest)
    model = accepted.job.model
    if accepted.job.status is JobStatus.QUEUED and not request.app[keys.REPLICAS].serving(model):
        body["note"] = (
            f"no replica serves {model} right now: the job waits in its queue until one does"
        )
    return json_response(body, status=202, headers=headers)


def requested_job_id(request: web.Request) -> str:
    job_id = request.match_info["job_id"]
    if not is_job_id(job_id):
        raise JobNotFound(job_id)
    if not request.app[keys.BROKER].replayed:
        # Until the log is replayed, "not found" could be wrong: say "not yet" instead.
        raise NotReady("the gateway is still rebuilding its results; try again shortly")
    return job_id


async def job_status(request: web.Request) -> web.Response:
    job_id = requested_job_id(request)
    settings = request.app[keys.SETTINGS]
    store = request.app[keys.STORE]
    wait = wait_seconds(request.query.get("wait"), settings.max_wait)
    since = _since(request.query.get("since"))
    client = client_of(request)
    if wait == 0:
        return json_response(job_body(store, store.get(job_id, client.owner)))
    # A held long-poll is a connection and a waiter: each client may hold only so many.
    with request.app[keys.OPEN_WAITS].hold(client):
        job = await store.wait(job_id, wait, since, client.owner)
    return json_response(job_body(store, job))


async def delete_job(request: web.Request) -> web.Response:
    """Cancel a queued job; forget a finished one; a started job cannot be stopped."""
    job_id = requested_job_id(request)
    cancelled = await request.app[keys.JOBS].cancel_or_forget(job_id, client_of(request).owner)
    if cancelled is None:
        return web.Response(status=204)
    store = request.app[keys.STORE]
    return json_response(job_body(store, cancelled))


def wait_seconds(raw: str | None, limit: float) -> float:
    """A ``?wait=`` from 0 to ``limit`` seconds (absent: 0), else a 400."""
    if raw is None:
        return 0.0
    try:
        wait = float(raw)
    except ValueError:
        wait = -1.0
    if not 0 <= wait <= limit:  # also rejects nan and inf
        raise MalformedRequest(f"wait must be a number of seconds from 0 to {limit:g}, got {raw!r}")
    return wait


def _since(raw: str | None) -> JobStatus | None:
    if raw is None:
        return None
    try:
        return JobStatus(raw)
    except ValueError:
        allowed = ", ".join(s.value for s in JobStatus)
        raise MalformedRequest(f"since must be one of {allowed}, got {raw!r}") from None


async def gallery_image(request: web.Request) -> web.Response:
    image = request.app[keys.GALLERY].find(request.match_info["name"])
    if image is None:
        raise NotFound(f"no gallery image named {request.match_info['name']!r}")
    return web.Response(
        body=image.data,
        content_type=image.content_type,
        headers={"Cache-Control": "public, max-age=3600"},
    )


async def healthz(request: web.Request) -> web.Response:
    if request.app[keys.WORKER] is not None:
        # One of several processes on this port: alive when they all answer.
        hung = await siblings.unresponsive(request.app)
        if hung is not None:
            raise Unresponsive(hung)
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    if not request.app[keys.BROKER].ready:
        raise NotReady("not connected to the broker, or still replaying the event log")
    if request.app[keys.WORKER] is not None:
        # One of several processes on this port: ready when they all are.
        reason = await siblings.unready(request.app)
        if reason is not None:
            raise NotReady(reason)
    return json_response({"status": "ready"})


async def openapi(request: web.Request) -> web.Response:
    tokens_required = bool(request.app[keys.SETTINGS].api_tokens)
    return web.Response(body=served_openapi(tokens_required), content_type="application/json")


@functools.cache
def served_openapi(tokens_required: bool) -> bytes:
    """openapi.json as this gateway serves it.  Each protected operation allows a bearer token
    or nothing (the empty requirement ``{}``); with IMGQ_API_TOKENS set only the token is true
    of this gateway, so the empty alternative is dropped."""
    text = OPENAPI_FILE.read_bytes()
    if not tokens_required:
        return text
    document = orjson.loads(text)
    for item in document["paths"].values():
        for operation in item.values():
            if isinstance(operation, dict) and "security" in operation:
                operation["security"] = [need for need in operation["security"] if need]
    return orjson.dumps(document)


async def static_asset(request: web.Request) -> web.FileResponse:
    """A file of the page: only one directly in gateway/static/; anything else is a 404 problem
    (aiohttp's own static route answers a missing file with an empty 404)."""
    name = request.match_info["file"]
    try:
        path = (STATIC_DIR / name).resolve()
        found = path.parent == STATIC_DIR and path.is_file()
    except (OSError, ValueError):  # e.g. a NUL byte in the name
        found = False
    if not found:
        raise NotFound(f"no page asset named {name!r}")
    return web.FileResponse(path)


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html")
