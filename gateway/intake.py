"""One way in for a job: a request's one to N images read, checked and accepted.

``POST /classifications`` and ``POST /batches`` both come through ``take``; a single job is a
batch of one.  What differs between the two is their ``Shape`` (``gateway/shapes.py``): the
bodies each reads (JSON naming a gallery image or a list of them, an urlencoded form,
multipart with gallery names and/or files, read by ``gateway/forms.py``), their limits and how
their answers word a refusal.  The rest is the same path:

1. the Content-Type, before anything is read (415);
2. the client's share, before the body is read (``gateway/shares.py``: 429), so a client over
   it costs the gateway next to nothing;
3. the body, read under the client's and the gateway's byte budgets and a time limit
   (``gateway/bodies.py``: 429, 503, 408), multipart streamed part by part with byte caps;
4. the callback URL, if any (``gateway/callbacks.py``: a public http(s) address, 422), the
   model, the images (a gallery name, or an upload checked on a thread:
   ``gateway/checks.py``) and the Idempotency-Key, all before any job is published: one bad
   image refuses the request (a batch's refusal names the image's index);
5. seats for all its jobs in the client's share, then ``Jobs.accept_all``: every job published
   with confirms, or none left queued.

The body's bytes are held (and counted) until the jobs are published.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Final

import orjson
from aiohttp import web

from gateway import keys
from gateway.batch_store import new_batch_id
from gateway.bodies import Lease
from gateway.clients import Caller
from gateway.context import client_of, is_offered, offered
from gateway.forms import Image, read_form, read_small_body, urlencoded_fields
from gateway.limits import MAX_IDEMPOTENCY_KEY
from gateway.shapes import MULTIPART, URLENCODED, Shape, Wanted
from gateway.submissions import Accepted, Submission
from shared.errors import (
    ImgqError,
    MalformedRequest,
    RequestTimeout,
    UnknownModel,
    UnsupportedContentType,
)
from shared.messages import BatchRef

# Visible ASCII, spaces only inside (as openapi.json's pattern says): other bytes do not reach
# us as sent (they are decoded as UTF-8 at best), and the HTTP parser trims the ends.
IDEMPOTENCY_KEY: Final = re.compile(r"[!-~](?:[ -~]*[!-~])?")


@dataclass(frozen=True, slots=True)
class Intake:
    """A request taken in: its jobs, accepted, in the order of its images."""

    model: str
    client: Caller
    accepted: list[Accepted]
    # Set for POST /batches: the batch every job carries its place in.
    batch_id: str | None = None


async def take(request: web.Request, shape: Shape) -> Intake:
    """Read, check and accept one request's jobs (see the module's docstring for the order)."""
    if request.content_type not in shape.content_types:
        raise UnsupportedContentType(request.content_type, shape.content_types)
    client = client_of(request)
    shares = request.app[keys.SHARES]
    shares.check(client)
    with request.app[keys.BODIES].lease(client) as lease:
        wanted = await _read_in_time(request, shape, lease)
        callback = None
        if wanted.callback_url is not None:
            callback = await request.app[keys.CALLBACKS].check(wanted.callback_url, client.owner)
        batch_id = new_batch_id() if shape.is_batch else None
        submissions = await _submissions(request, shape, wanted, batch_id, callback)
        with shares.reserve(client, len(submissions)) as seats:
            accepted = await request.app[keys.JOBS].accept_all(submissions, client.owner, seats)
    return Intake(wanted.model, client, accepted, batch_id)


async def _read_in_time(request: web.Request, shape: Shape, lease: Lease) -> Wanted:
    if request.content.is_eof():
        # The whole body has arrived already (a small one comes with the headers): reading
        # it cannot wait, so no timer is armed and cancelled for it.
        return await _read(request, shape, lease)
    seconds = request.app[keys.SETTINGS].body_timeout
    try:
        async with asyncio.timeout(seconds):
            return await _read(request, shape, lease)
    except TimeoutError:
        raise RequestTimeout(
            f"the request body did not arrive within {seconds:g} s; send it faster, or in "
            "smaller requests"
        ) from None


async def _submissions(
    request: web.Request,
    shape: Shape,
    wanted: Wanted,
    batch_id: str | None,
    callback: str | None,
) -> list[Submission]:
    """Every image checked and made a job, before any is published: the first bad one
    refuses the whole request."""
    model, images = wanted.model, wanted.images
    if not is_offered(request, model):
        raise UnknownModel(model, offered(request))
    key = idempotency_key(request)
    shape.check_key(key)
    reuse = "no-cache" not in request.headers.get("Cache-Control", "")
    submissions = []
    # One at a time: a batch takes one of the upload-check threads, never all of them.
    for index, image in enumerate(images):
        # Every job carries its place in its batch (its request and its events), so any
        # gateway can answer GET /batches/{id} from the event log.
        place = None if batch_id is None else BatchRef(batch_id, index, len(images))
        try:
            submission = await _submission(
                request,
                model,
                image,
                key=shape.image_key(key, index),
                reuse=reuse,
                batch=place,
                callback=callback,
            )
        except ImgqError as error:
            raise shape.about(error, index, image) from None
        submissions.append(submission)
    return submissions


async def _read(request: web.Request, shape: Shape, lease: Lease) -> Wanted:
    """What the body asks for (checked for shape, not content)."""
    limits = request.app[keys.SETTINGS].batch_limits
    if request.content_type == MULTIPART:
        form = await read_form(request, shape, limits, lease)
        return shape.from_form(form)
    raw = await read_small_body(request, lease)
    if request.content_type == URLENCODED:
        return shape.from_fields(urlencoded_fields(raw))
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MalformedRequest(f"body is not valid JSON: {exc}") from None
    return shape.from_json(body, limits)


async def _submission(
    request: web.Request,
    model: str,
    image: Image,
    *,
    key: str | None,
    reuse: bool,
    batch: BatchRef | None,
    callback: str | None,
) -> Submission:
    """The job for one image: a gallery image as it was loaded (hashed once at start-up), an
    upload once its bytes are checked (off the event loop, bounded: ``gateway/checks.py``)."""
    if isinstance(image, str):
        found = request.app[keys.GALLERY].get(image)
        name, data, content_type, digest = found.name, found.data, found.content_type, found.sha256
    else:
        content_type = await request.app[keys.IMAGE_CHECKS].media_type(image.data)
        name, data, digest = f"upload:{image.filename}", image.data, ""
    return Submission(
        model,
        name,
        data,
        content_type,
        image_sha256=digest,
        idempotency_key=key,
        reuse=reuse,
        batch=batch,
        callback=callback,
    )


def idempotency_key(request: web.Request) -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if len(key) > MAX_IDEMPOTENCY_KEY or not IDEMPOTENCY_KEY.fullmatch(key):
        raise MalformedRequest(
            f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters "
            "(spaces only between them)"
        )
    return key
