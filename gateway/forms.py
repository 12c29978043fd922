"""A submission's body, read: a small JSON or urlencoded one, or multipart/form-data streamed
part by part.

Every byte read is held against the request's lease (``gateway/bodies.py``), and each kind of
body has its cap: a small body's is fixed, a form's is the route's (``FormRules``, which
``gateway/intake.py``'s shapes follow), and an oversized upload is refused after at most the
limit plus the form's framing, never buffered whole.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import parse_qsl

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from gateway.batch_store import BatchLimits
from gateway.bodies import Lease
from gateway.limits import (
    MAX_FIELD_BYTES,
    MAX_SMALL_BODY_BYTES,
    MAX_UPLOAD_BYTES,
    MAX_UPLOAD_TEXT,
    MAX_URL_FIELD_BYTES,
)
from gateway.uploads import Upload, display_name
from shared.errors import ImgqError, MalformedRequest, PayloadTooLarge

_CHUNK = 64 * 1024

# An image as the client named it: a gallery image's name, or an upload.
Image = str | Upload


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


def urlencoded_fields(body: bytes) -> dict[str, str]:
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
    ``image``, ``callback_url``) and each ``file`` part (a browser's empty file input is left
    out)."""

    parts: list[tuple[str, Image]] = field(default_factory=list)

    def text(self, name: str) -> list[str]:
        return [value for part, value in self.parts if part == name and isinstance(value, str)]

    def images(self) -> list[Image]:
        return [value for part, value in self.parts if part in ("image", "file")]


class FormRules(Protocol):
    """What a route allows in its form (``gateway/intake.py``'s shapes)."""

    def form_bytes(self, limits: BatchLimits) -> int:
        """The most bytes the whole form may have."""

    def declared_too_large(self, length: int, limit: int) -> str: ...

    def form_too_large(self, limit: int) -> str: ...

    def form_parts(self, limits: BatchLimits) -> int:
        """Parts read before ``too_many_parts`` answers."""

    def too_many_parts(self, limits: BatchLimits) -> ImgqError: ...

    def check_part(self, name: str | None, form: Form) -> None:
        """Refuse a part that may not come next, before it is read."""

    def check_images(self, limits: BatchLimits, count: int) -> None:
        """Refuse the ``count``-th image of a form, before it is read."""

    def check_upload(self, form: Form) -> None:
        """Refuse an upload (read, not empty) that may not follow ``form``'s parts."""


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


async def read_form(
    request: web.Request, shape: FormRules, limits: BatchLimits, lease: Lease
) -> Form:
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
    limit = MAX_URL_FIELD_BYTES if part.name == "callback_url" else MAX_FIELD_BYTES
    data = bytearray()
    while chunk := await part.read_chunk(_CHUNK):
        meter.spend(len(chunk))
        data += chunk
        if len(data) > limit:
            raise MalformedRequest(f"form field {part.name!r} is longer than {limit} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedRequest(f"form field {part.name!r} is not UTF-8 text") from None
