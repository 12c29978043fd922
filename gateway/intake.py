"""One way in for a job: a request's one to N images read, checked and accepted.

``POST /classifications`` and ``POST /batches`` both come through ``take``; a single job is a
batch of one.  What differs between the two is their ``Shape``: the bodies each reads (JSON
naming a gallery image or a list of them, an urlencoded form, multipart with gallery names
and/or files), their limits and how their answers word a refusal.  The rest is the same path:

1. the Content-Type, before anything is read (415);
2. the client's share, before the body is read (``gateway/shares.py``: 429), so a client over
   it costs the gateway next to nothing;
3. the body, read under the client's and the gateway's byte budgets and a time limit
   (``gateway/bodies.py``: 429, 503, 408), multipart streamed part by part with byte caps;
4. the model, the images (a gallery name, or an upload checked on a thread:
   ``gateway/checks.py``) and the Idempotency-Key, all before any job is published: one bad
   image refuses the request (a batch's refusal names the image's index);
5. seats for all its jobs in the client's share, then ``Jobs.accept_all``: every job published
   with confirms, or none left queued.

The body's bytes are held (and counted) until the jobs are published.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import parse_qsl

import orjson
from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from gateway import keys
from gateway.batch_store import MAX_BATCH_IMAGES, BatchLimits, new_batch_id
from gateway.bodies import Lease
from gateway.clients import Client
from gateway.context import client_of, is_offered, offered
from gateway.limits import (
    MAX_FIELD_BYTES,
    MAX_FORM_PARTS,
    MAX_REQUEST_BYTES,
    MAX_SMALL_BODY_BYTES,
    MAX_UPLOAD_BYTES,
    MAX_UPLOAD_TEXT,
)
from gateway.submissions import Accepted, Submission
from gateway.uploads import Upload, display_name
from shared.errors import (
    EmptyBatch,
    ImgqError,
    MalformedRequest,
    PayloadTooLarge,
    RequestTimeout,
    UnknownModel,
    UnsupportedContentType,
)
from shared.messages import BatchRef

JSON: Final = "application/json"
URLENCODED: Final = "application/x-www-form-urlencoded"
MULTIPART: Final = "multipart/form-data"
FORM_TYPES: Final = (URLENCODED, MULTIPART)
# Long enough for a UUID or a client's own request ID, short enough to index cheaply.
MAX_IDEMPOTENCY_KEY: Final = 255
# Visible ASCII, spaces only inside (as openapi.json's pattern says): other bytes do not reach
# us as sent (they are decoded as UTF-8 at best), and the HTTP parser trims the ends.
IDEMPOTENCY_KEY: Final = re.compile(r"[!-~](?:[ -~]*[!-~])?")
# Room in a job's key (MAX_IDEMPOTENCY_KEY) for the '#<index>' suffix of any image index
# below MAX_BATCH_IMAGES (batch_store.py): '#9999' is 5 characters.
MAX_BATCH_KEY: Final = MAX_IDEMPOTENCY_KEY - len(f"#{MAX_BATCH_IMAGES - 1}")

_CHUNK = 64 * 1024

# An image as the client named it: a gallery image's name, or an upload.
Image = str | Upload


@dataclass(frozen=True, slots=True)
class Intake:
    """A request taken in: its jobs, accepted, in the order of its images."""

    model: str
    client: Client
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
        model, images = await _read_in_time(request, shape, lease)
        batch_id = new_batch_id() if shape.is_batch else None
        submissions = await _submissions(request, shape, model, images, batch_id)
        with shares.reserve(client, len(submissions)) as seats:
            accepted = await request.app[keys.JOBS].accept_all(submissions, client.owner, seats)
    return Intake(model, client, accepted, batch_id)


async def _read_in_time(
    request: web.Request, shape: Shape, lease: Lease
) -> tuple[str, list[Image]]:
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
    request: web.Request, shape: Shape, model: str, images: list[Image], batch_id: str | None
) -> list[Submission]:
    """Every image checked and made a job, before any is published: the first bad one
    refuses the whole request."""
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
                request, model, image, key=shape.image_key(key, index), reuse=reuse, batch=place
            )
        except ImgqError as error:
            raise shape.about(error, index, image) from None
        submissions.append(submission)
    return submissions


async def _read(request: web.Request, shape: Shape, lease: Lease) -> tuple[str, list[Image]]:
    """The model and the images, as the body names them (checked for shape, not content)."""
    limits = request.app[keys.SETTINGS].batch_limits
    if request.content_type == MULTIPART:
        form = await _read_form(request, shape, limits, lease)
        return shape.from_form(form)
    raw = await read_small_body(request, lease)
    if request.content_type == URLENCODED:
        return shape.from_fields(_urlencoded_fields(raw))
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


# -- bodies -----------------------------------------------------------------------------------


async def read_small_body(request: web.Request, lease: Lease) -> bytes:
    """A JSON or urlencoded body, refused past MAX_SMALL_BODY_BYTES: from its declared length
    before anything is read, or, sent chunked, as soon as it grows past the limit."""
    length = request.content_length
    if length is not None:
        if length > MAX_SMALL_BODY_BYTES:
            raise PayloadTooLarge(_small_body_refusal(f"{length} bytes"))
        lease.cover(length)
    body = bytearray()
    while chunk := await request.content.readany():
        body += chunk
        if len(body) > MAX_SMALL_BODY_BYTES:
            raise PayloadTooLarge(_small_body_refusal(f"over {MAX_SMALL_BODY_BYTES} bytes"))
        lease.cover(len(body))
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


@dataclass(slots=True)
class Form:
    """A multipart/form-data body's parts, in the order sent: each text field (``model``,
    ``image``) and each ``file`` part (a browser's empty file input is left out)."""

    parts: list[tuple[str, Image]] = field(default_factory=list)

    def text(self, name: str) -> list[str]:
        return [value for part, value in self.parts if part == name and isinstance(value, str)]

    def images(self) -> list[Image]:
        return [value for part, value in self.parts if part in ("image", "file")]


class _Meter:
    """Bytes read of a multipart body: against the shape's limit for the whole form (413) and
    the request's lease (429 / 503)."""

    def __init__(self, lease: Lease, limit: int, refusal: str) -> None:
        self._lease = lease
        self._limit = limit
        self._refusal = refusal
        self.read = 0

    def spend(self, n: int) -> None:
        self.read += n
        if self.read > self._limit:
            raise PayloadTooLarge(self._refusal)
        self._lease.cover(self.read)


async def _read_form(request: web.Request, shape: Shape, limits: BatchLimits, lease: Lease) -> Form:
    """The parts of a multipart/form-data body, streamed with byte caps: the answer comes as
    soon as a limit is passed, before the rest is read, and nothing past it is kept."""
    limit = shape.form_bytes(limits)
    length = request.content_length
    if length is not None:
        if length > limit:
            # Refused from the declared length alone: nothing of the body is read.
            raise PayloadTooLarge(shape.declared_too_large(length, limit))
        lease.cover(length)
    meter = _Meter(lease, limit, shape.form_too_large(limit))
    form = Form()
    try:
        reader = await request.multipart()
        for _ in range(shape.form_parts(limits)):
            part = await reader.next()
            if part is None:
                return form
            if not isinstance(part, BodyPartReader):
                raise MalformedRequest("nested multipart bodies are not accepted")
            shape.check_part(part.name, form)
            if part.name in ("image", "file"):
                shape.check_images(limits, len(form.images()) + 1)
            value: Image
            if part.name == "file":
                data = await _read_file(part, meter)
                # A browser sends an empty part for a file input left empty: no upload.
                if not (data or part.filename):
                    continue
                shape.check_upload(form)
                value = Upload(display_name(part.filename), data)
            else:
                value = await _read_field(part, meter)
            form.parts.append((part.name or "", value))
    except (ValueError, HttpProcessingError) as exc:  # a broken body or part header
        raise MalformedRequest(f"the multipart body cannot be read: {exc}") from None
    raise shape.too_many_parts(limits)


async def _read_file(part: BodyPartReader, meter: _Meter) -> bytes:
    data = bytearray()
    while chunk := await part.read_chunk(_CHUNK):
        meter.spend(len(chunk))
        # Past the limit, keep counting (the meter stops us within FORM_OVERHEAD_BYTES) so
        # the answer can say how large the file was, but keep nothing more.
        if len(data) + len(chunk) <= MAX_UPLOAD_BYTES:
            data += chunk
        else:
            size = len(data) + len(chunk)
            while chunk := await part.read_chunk(_CHUNK):
                meter.spend(len(chunk))
                size += len(chunk)
            raise PayloadTooLarge(f"the upload is {size} bytes; the limit is {MAX_UPLOAD_TEXT}")
    return bytes(data)


async def _read_field(part: BodyPartReader, meter: _Meter) -> str:
    data = bytearray()
    while chunk := await part.read_chunk(_CHUNK):
        meter.spend(len(chunk))
        data += chunk
        if len(data) > MAX_FIELD_BYTES:
            raise MalformedRequest(
                f"form field {part.name!r} is longer than {MAX_FIELD_BYTES} bytes"
            )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedRequest(f"form field {part.name!r} is not UTF-8 text") from None


# -- the two shapes ---------------------------------------------------------------------------


def _model(value: object) -> str:
    if not isinstance(value, str):
        raise MalformedRequest("field 'model' is required and must be a string")
    return value


class Shape:
    """What one route reads and how it words a refusal; ``take`` does the rest."""

    content_types: tuple[str, ...]
    is_batch: bool

    def from_json(self, body: object, limits: BatchLimits) -> tuple[str, list[Image]]:
        raise NotImplementedError

    def from_fields(self, fields: dict[str, str]) -> tuple[str, list[Image]]:
        raise NotImplementedError

    def from_form(self, form: Form) -> tuple[str, list[Image]]:
        raise NotImplementedError

    def form_bytes(self, limits: BatchLimits) -> int:
        raise NotImplementedError

    def declared_too_large(self, length: int, limit: int) -> str:
        raise NotImplementedError

    def form_too_large(self, limit: int) -> str:
        raise NotImplementedError

    def form_parts(self, limits: BatchLimits) -> int:
        """Parts read before ``too_many_parts`` answers."""
        raise NotImplementedError

    def too_many_parts(self, limits: BatchLimits) -> ImgqError:
        raise NotImplementedError

    def check_part(self, name: str | None, form: Form) -> None:
        """Refuse a part that may not come next, before it is read."""
        if name not in ("model", "image", "file"):
            raise MalformedRequest(f"unknown form field {name!r}; {self._form_has}")

    _form_has: str

    def check_images(self, limits: BatchLimits, count: int) -> None:
        """Refuse the ``count``-th image of a form, before it is read."""

    def check_upload(self, form: Form) -> None:
        """Refuse an upload (read, not empty) that may not follow ``form``'s parts."""

    def check_key(self, key: str | None) -> None:
        """Refuse an Idempotency-Key the shape cannot use."""

    def image_key(self, key: str | None, index: int) -> str | None:
        return key

    def about(self, error: ImgqError, index: int, image: Image) -> ImgqError:
        """The error an image's check raised, as this route answers it."""
        return error


class _Single(Shape):
    """``POST /classifications``: one gallery image or one upload."""

    content_types = (JSON, URLENCODED, MULTIPART)
    is_batch = False
    # As openapi.json says: only our parts.  A misnamed file part (say 'upload') gets this
    # answer rather than a puzzling "field 'image' is required".
    _form_has = "a form has 'model' and either 'image' or 'file'"

    def from_json(self, body: object, limits: BatchLimits) -> tuple[str, list[Image]]:
        if not isinstance(body, dict):
            raise MalformedRequest('body must be a JSON object like {"model": ..., "image": ...}')
        return self._one(body.get("model"), body.get("image"), None, suffix="")

    def from_fields(self, fields: dict[str, str]) -> tuple[str, list[Image]]:
        return self._one(fields.get("model"), fields.get("image"), None, suffix="")

    def from_form(self, form: Form) -> tuple[str, list[Image]]:
        # A text field sent twice counts once, with its last value.
        models, names = form.text("model"), form.text("image")
        uploads = [image for image in form.images() if isinstance(image, Upload)]
        return self._one(
            models[-1] if models else None,
            names[-1] if names else None,
            uploads[0] if uploads else None,
            suffix=" (or upload a 'file')",
        )

    @staticmethod
    def _one(
        model: object, name: object, upload: Upload | None, suffix: str
    ) -> tuple[str, list[Image]]:
        checked = _model(model)
        if upload is not None:
            if name is not None:
                raise MalformedRequest(
                    "send either a gallery 'image' or a 'file' to upload, not both"
                )
            return checked, [upload]
        if not isinstance(name, str):
            raise MalformedRequest(f"field 'image' is required and must be a string{suffix}")
        return checked, [name]

    def form_bytes(self, limits: BatchLimits) -> int:
        return MAX_REQUEST_BYTES

    def declared_too_large(self, length: int, limit: int) -> str:
        return f"the upload is {length} bytes; the limit is {MAX_UPLOAD_TEXT}"

    def form_too_large(self, limit: int) -> str:
        return f"the upload is more than {MAX_UPLOAD_BYTES} bytes; the limit is {MAX_UPLOAD_TEXT}"

    def form_parts(self, limits: BatchLimits) -> int:
        return MAX_FORM_PARTS + 1

    def too_many_parts(self, limits: BatchLimits) -> ImgqError:
        return MalformedRequest(f"a form has at most {MAX_FORM_PARTS} parts")

    def check_upload(self, form: Form) -> None:
        if any(isinstance(image, Upload) for image in form.images()):
            raise MalformedRequest("send one 'file' per job")


class _Batch(Shape):
    """``POST /batches``: one model and up to IMGQ_BATCH_MAX_IMAGES gallery names and/or
    uploads, in order; a refusal caused by one image names its index."""

    content_types = (JSON, MULTIPART)
    is_batch = True
    _form_has = "a batch form has one 'model' and 'file' parts and/or 'image' fields"

    def from_json(self, body: object, limits: BatchLimits) -> tuple[str, list[Image]]:
        if not isinstance(body, dict) or not isinstance(body.get("images"), list):
            raise MalformedRequest(
                'body must be a JSON object like {"model": ..., "images": ["name", ...]}'
            )
        images: list[object] = body["images"]
        if len(images) > limits.max_images:
            raise PayloadTooLarge(
                f"the batch has {len(images)} images; a batch has at most {limits.max_images}"
            )
        names: list[Image] = []
        for index, name in enumerate(images):
            if not isinstance(name, str):
                raise MalformedRequest(f"images[{index}] must be a gallery image name (a string)")
            names.append(name)
        return self._checked(body.get("model"), names)

    def from_form(self, form: Form) -> tuple[str, list[Image]]:
        models = form.text("model")
        return self._checked(models[0] if models else None, form.images())

    @staticmethod
    def _checked(model: object, images: list[Image]) -> tuple[str, list[Image]]:
        checked = _model(model)
        if not images:
            raise EmptyBatch("a batch needs at least one image ('images' in JSON, or 'file' parts)")
        return checked, images

    def form_bytes(self, limits: BatchLimits) -> int:
        return limits.max_bytes

    def declared_too_large(self, length: int, limit: int) -> str:
        return f"the batch is {length} bytes; the limit is {limit} in all"

    def form_too_large(self, limit: int) -> str:
        return f"the batch is more than {limit} bytes in all; send fewer or smaller images"

    def form_parts(self, limits: BatchLimits) -> int:
        # The model, the images, and one more part to tell "too many" from "just enough".
        return limits.max_images + 2

    def too_many_parts(self, limits: BatchLimits) -> ImgqError:
        return PayloadTooLarge(f"a batch has at most {limits.max_images} images")

    def check_part(self, name: str | None, form: Form) -> None:
        super().check_part(name, form)
        if name == "model" and form.text("model"):
            raise MalformedRequest("send one 'model' per batch")

    def check_images(self, limits: BatchLimits, count: int) -> None:
        if count > limits.max_images:
            raise self.too_many_parts(limits)

    def check_key(self, key: str | None) -> None:
        if key is not None and len(key) > MAX_BATCH_KEY:
            raise MalformedRequest(
                f"a batch's Idempotency-Key may have at most {MAX_BATCH_KEY} characters (each "
                "image's job is keyed '<key>#<index>')"
            )

    def image_key(self, key: str | None, index: int) -> str | None:
        return None if key is None else f"{key}#{index}"

    def about(self, error: ImgqError, index: int, image: Image) -> ImgqError:
        """The same error (so the same status and code), its message naming the image."""
        name = image if isinstance(image, str) else f"file {image.filename!r}"
        error.message = f"images[{index}] ({name}): {error.message}"
        error.args = (error.message,)
        return error


SINGLE: Final[Shape] = _Single()
BATCH: Final[Shape] = _Batch()
