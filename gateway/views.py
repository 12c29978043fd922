"""HTTP handlers.  Errors are raised as ``ImgqError`` and turned into problems in one place."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from gateway import keys
from shared.catalog import CATALOG
from shared.errors import JobNotFound, MalformedRequest, NotFound, UnknownModel
from shared.messages import ClassifyRequest, JobEvent, is_job_id, new_job_id
from shared.states import JobStatus

STATIC_DIR = Path(__file__).resolve().parent / "static"
OPENAPI_FILE = Path(__file__).resolve().parent / "openapi.json"
_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(data), content_type="application/json", headers=headers
    )


async def info(request: web.Request) -> web.Response:
    settings = request.app[keys.SETTINGS]
    replicas = request.app[keys.REPLICAS]
    models = []
    for name in settings.models:
        spec = CATALOG[name]
        serving = replicas.serving(name)
        models.append(
            {
                "name": name,
                "title": spec.title,
                "input_size": spec.input_size,
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
    return json_response({"models": models, "images": images, "max_wait": settings.max_wait})


async def _submission_fields(request: web.Request) -> tuple[object, object]:
    if request.content_type in _FORM_TYPES:
        form = await request.post()
        return form.get("model"), form.get("image")
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        raise MalformedRequest(f"body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise MalformedRequest('body must be a JSON object like {"model": ..., "image": ...}')
    return body.get("model"), body.get("image")


async def submit(request: web.Request) -> web.StreamResponse:
    settings = request.app[keys.SETTINGS]
    model, image_name = await _submission_fields(request)
    for field, value in (("model", model), ("image", image_name)):
        if not isinstance(value, str):
            raise MalformedRequest(f"field {field!r} is required and must be a string")
    if model not in settings.models:
        raise UnknownModel(model, settings.models)
    image = request.app[keys.GALLERY].get(image_name)
    assert isinstance(model, str)

    job = ClassifyRequest(new_job_id(), model, image.name, image.data, time.time())
    queued = JobEvent.for_request(job, JobStatus.QUEUED)
    store = request.app[keys.STORE]
    # Recorded before publishing: a fast replica's events can beat the confirm back to us.
    store.apply(queued)
    try:
        await request.app[keys.BROKER].submit(job)
    except Exception:
        store.forget(job.job_id)
        raise
    location = f"/classifications/{job.job_id}"
    if request.content_type in _FORM_TYPES and "text/html" in request.headers.get("Accept", ""):
        raise web.HTTPSeeOther(location)
    return json_response(queued.to_dict(), status=202, headers={"Location": location})


async def job_status(request: web.Request) -> web.Response:
    job_id = request.match_info["job_id"]
    if not is_job_id(job_id):
        raise JobNotFound(job_id)
    settings = request.app[keys.SETTINGS]
    wait = _wait_seconds(request.query.get("wait"), settings.max_wait)
    since = _since(request.query.get("since"))
    job = await request.app[keys.STORE].wait(job_id, wait, since)
    return json_response(job.to_dict())


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
        from gateway.problems import problem

        return problem(503, "not_ready", "not connected to the broker, or not consuming results")
    return json_response({"status": "ready"})


async def openapi(request: web.Request) -> web.FileResponse:
    return web.FileResponse(OPENAPI_FILE, headers={"Content-Type": "application/json"})


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html")
