"""HTTP handlers.  Errors are raised as ``ImgqError`` and turned into problems in one place."""

from __future__ import annotations

import functools
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import orjson
from aiohttp import web

from gateway import keys
from gateway.auth import OWNER
from gateway.clients import Client
from gateway.limits import MAX_SMALL_BODY_BYTES, MAX_UPLOAD_TEXT
from gateway.store import JobStore
from gateway.submissions import Accepted, Submission
from gateway.uploads import Upload, read_form
from shared.catalog import CATALOG
from shared.errors import (
    ImgqError,
    JobNotFound,
    MalformedRequest,
    NotFound,
    NotReady,
    PayloadTooLarge,
    UnknownModel,
    UnsupportedContentType,
)
from shared.messages import JobEvent, is_job_id
from shared.states import JobStatus

STATIC_DIR = Path(__file__).resolve().parent / "static"
OPENAPI_FILE = Path(__file__).resolve().parent / "openapi.json"
_JSON = "application/json"
_URLENCODED = "application/x-www-form-urlencoded"
_MULTIPART = "multipart/form-data"
_FORM_TYPES = (_URLENCODED, _MULTIPART)
# What POST /classifications reads; any other body (text/plain, none declared) is a 415.
_SUBMISSION_TYPES = (_JSON, *_FORM_TYPES)
# Long enough for a UUID or a client's own request ID, short enough to index cheaply.
MAX_IDEMPOTENCY_KEY = 255
# Visible ASCII, spaces only inside (as openapi.json's pattern says): other bytes do not reach
# us as sent (they are decoded as UTF-8 at best), and the HTTP parser trims the ends.
_IDEMPOTENCY_KEY = re.compile(r"[!-~](?:[ -~]*[!-~])?")


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(data), content_type="application/json", headers=headers
    )


@dataclass(frozen=True, slots=True)
class OfferedModel:
    """A model ID a job may name: ``name`` (its default version) or ``name@version``."""

    name: str
    title: str
    input_size: int
    # None for a catalogue model no replica has announced yet.
    version: str | None = None
    # What the replica that announced it last runs it in ("fp32" until one has).
    precision: str = "fp32"


def offered(request: web.Request) -> dict[str, OfferedModel]:
    """Every model ID on offer: the configured catalogue first, then every ID a replica has
    announced since start-up (repository and torchvision models, and their versions), online
    or not: each has a work queue, where its jobs wait for a replica.  A model no replica
    could load was never announced, so it is never offered."""
    models = {
        name: OfferedModel(name, CATALOG[name].title, CATALOG[name].input_size)
        for name in request.app[keys.SETTINGS].models
    }
    for model_id, announced in request.app[keys.REPLICAS].known().items():
        if model_id in models and models[model_id].version is not None:
            continue
        models[model_id] = OfferedModel(
            announced.name or model_id,
            announced.title,
            announced.input_size,
            announced.version,
            announced.precision,
        )
    return models


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
        {"models": list(by_name.values()), "images": images, "max_wait": settings.max_wait}
    )


async def _read_submission(request: web.Request) -> Submission:
    """One path for every body: JSON, a form naming a gallery image, or an upload."""
    settings = request.app[keys.SETTINGS]
    upload: Upload | None = None
    if request.content_type not in _SUBMISSION_TYPES:
        raise UnsupportedContentType(request.content_type, _SUBMISSION_TYPES)
    if request.content_type == _MULTIPART:
        form = await read_form(request)
        model: object = form.fields.get("model")
        image_name: object = form.fields.get("image")
        upload = form.upload
    else:
        raw = await _read_small_body(request)
        if request.content_type == _URLENCODED:
            fields = _urlencoded_fields(raw)
            model, image_name = fields.get("model"), fields.get("image")
        else:
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise MalformedRequest(f"body is not valid JSON: {exc}") from None
            if not isinstance(body, dict):
                raise MalformedRequest(
                    'body must be a JSON object like {"model": ..., "image": ...}'
                )
            model, image_name = body.get("model"), body.get("image")
    if not isinstance(model, str):
        raise MalformedRequest("field 'model' is required and must be a string")
    if upload is not None and image_name is not None:
        raise MalformedRequest("send either a gallery 'image' or a 'file' to upload, not both")
    if upload is None and not isinstance(image_name, str):
        raise MalformedRequest(
            "field 'image' is required and must be a string"
            + (" (or upload a 'file')" if request.content_type == _MULTIPART else "")
        )
    if model not in settings.models:
        allowed = offered(request)
        if model not in allowed:
            raise UnknownModel(model, allowed)
    key = _idempotency_key(request)
    reuse = "no-cache" not in request.headers.get("Cache-Control", "")
    if upload is None:
        image = request.app[keys.GALLERY].get(image_name)
        return Submission(
            model,
            image.name,
            image.data,
            image.content_type,
            image_sha256=image.sha256,
            idempotency_key=key,
            reuse=reuse,
        )
    content_type = await request.app[keys.IMAGE_CHECKS].media_type(upload.data)
    return Submission(
        model,
        f"upload:{upload.filename}",
        upload.data,
        content_type,
        idempotency_key=key,
        reuse=reuse,
    )


async def _read_small_body(request: web.Request) -> bytes:
    """A JSON or urlencoded body, refused past MAX_SMALL_BODY_BYTES: from its declared length
    before anything is read, or, sent chunked, as soon as it grows past the limit."""
    length = request.content_length
    if length is not None and length > MAX_SMALL_BODY_BYTES:
        raise PayloadTooLarge(_small_body_refusal(f"{length} bytes"))
    body = bytearray()
    while chunk := await request.content.readany():
        body += chunk
        if len(body) > MAX_SMALL_BODY_BYTES:
            raise PayloadTooLarge(_small_body_refusal(f"over {MAX_SMALL_BODY_BYTES} bytes"))
    return bytes(body)


def _small_body_refusal(size: str) -> str:
    return (
        f"the request body is {size}; a JSON or urlencoded submission may have "
        f"{MAX_SMALL_BODY_BYTES} (to upload an image, send multipart/form-data with a "
        f"'file' of up to {MAX_UPLOAD_TEXT})"
    )


def _urlencoded_fields(body: bytes) -> dict[str, str]:
    try:
        text = body.decode()
    except UnicodeDecodeError:
        raise MalformedRequest("an urlencoded body must be UTF-8 text") from None
    fields: dict[str, str] = {}
    for name, value in parse_qsl(text, keep_blank_values=True):
        fields.setdefault(name, value)  # a repeated name counts once, first value first
    return fields


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
    submission = await _read_submission(request)
    accepted = await request.app[keys.JOBS].accept(submission, client_of(request))
    return _accepted(request, request.app[keys.STORE], accepted)


def _accepted(request: web.Request, store: JobStore, accepted: Accepted) -> web.StreamResponse:
    location = f"/classifications/{accepted.job.job_id}"
    if request.content_type in _FORM_TYPES and "text/html" in request.headers.get("Accept", ""):
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


def _idempotency_key(request: web.Request) -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if len(key) > MAX_IDEMPOTENCY_KEY or not _IDEMPOTENCY_KEY.fullmatch(key):
        raise MalformedRequest(
            f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters "
            "(spaces only between them)"
        )
    return key


def job_body(store: JobStore, job: JobEvent, *, newest: bool = False) -> dict[str, Any]:
    body = job.to_dict()
    if job.status is not JobStatus.QUEUED:
        body["position"] = None
    elif newest:
        body["position"] = store.position_if_newest(job.job_id)
    else:
        body["position"] = store.position(job.job_id)
    return body


def client_of(request: web.Request) -> Client:
    """Who is asking: their token's hash on a gateway with tokens, and their address."""
    limits = request.app[keys.SETTINGS].client_limits
    address = limits.client_address(request.remote, request.headers.get("X-Forwarded-For"))
    return Client(owner=request.get(OWNER), address=address)


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
    wait = _wait_seconds(request.query.get("wait"), settings.max_wait)
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


def _wait_seconds(raw: str | None, limit: float) -> float:
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
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    if not request.app[keys.BROKER].ready:
        raise NotReady("not connected to the broker, or still replaying the event log")
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
