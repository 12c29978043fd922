"""Read and check an uploaded image: ``POST /classifications`` as multipart/form-data.

The body is streamed part by part with byte caps, so an oversized upload is refused
after at most the limit plus the form's framing, never buffered whole.  The image's
format is sniffed from its bytes by Pillow (restricted to the decoders the replicas use,
``shared/images.py``, so no other decoder ever sees client bytes); the filename and the
part's Content-Type are only the client's claims and are used for display at most.  A
JPEG's scans are counted before it is decoded: a few KiB with thousands of them would
take minutes.  The bytes stay in memory until the job is published, and are never
written to disk.
"""

from __future__ import annotations

import io
import struct
import unicodedata
from dataclasses import dataclass

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from PIL import Image, UnidentifiedImageError

from gateway.limits import (
    MAX_FIELD_BYTES,
    MAX_FILENAME_CHARS,
    MAX_FORM_PARTS,
    MAX_PIXELS,
    MAX_REQUEST_BYTES,
    MAX_UPLOAD_BYTES,
    MAX_UPLOAD_TEXT,
    UPLOAD_FORMATS,
)
from shared.errors import (
    ImageTooLarge,
    ImageUnreadable,
    MalformedRequest,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from shared.images import DECODERS, FORMAT_NAMES, JPEG_FORMATS, jpeg_refusal

_CHUNK = 64 * 1024
# The text parts of a form; the other one is the 'file'.
_TEXT_FIELDS = ("model", "image")
# Where a name has no usable characters left after sanitising.
_UNNAMED = "image"


@dataclass(frozen=True, slots=True)
class Upload:
    filename: str  # sanitised, for display only
    data: bytes


@dataclass(frozen=True, slots=True)
class Form:
    fields: dict[str, str]
    upload: Upload | None


class _Budget:
    """Bytes left for the whole form: the upload(s) plus the framing."""

    def __init__(
        self,
        limit: int = MAX_REQUEST_BYTES,
        refusal: str = (
            f"the upload is more than {MAX_UPLOAD_BYTES} bytes; the limit is {MAX_UPLOAD_TEXT}"
        ),
    ) -> None:
        self.left = limit
        self._refusal = refusal

    def spend(self, n: int) -> None:
        self.left -= n
        if self.left < 0:
            raise PayloadTooLarge(self._refusal)


async def read_form(request: web.Request) -> Form:
    """The text fields and the (unchecked) ``file`` part of a multipart/form-data body."""
    length = request.content_length
    if length is not None and length > MAX_REQUEST_BYTES:
        # Refused from the declared length alone: nothing of the body is read.
        raise PayloadTooLarge(f"the upload is {length} bytes; the limit is {MAX_UPLOAD_TEXT}")
    budget = _Budget()
    fields: dict[str, str] = {}
    upload: Upload | None = None
    try:
        reader = await request.multipart()
        for _ in range(MAX_FORM_PARTS + 1):
            part = await reader.next()
            if part is None:
                return Form(fields, upload)
            if not isinstance(part, BodyPartReader):
                raise MalformedRequest("nested multipart bodies are not accepted")
            if part.name == "file":
                data = await _read_file(part, budget)
                # A browser sends an empty part for a file input left empty: no upload.
                if data or part.filename:
                    if upload is not None:
                        raise MalformedRequest("send one 'file' per job")
                    upload = Upload(display_name(part.filename), data)
            elif part.name in _TEXT_FIELDS:
                fields[part.name] = await _read_field(part, budget)
            else:
                # As openapi.json says: only our parts.  A misnamed file part (say 'upload')
                # gets this answer rather than a puzzling "field 'image' is required".
                raise MalformedRequest(
                    f"unknown form field {part.name!r}; a form has 'model' and either "
                    "'image' or 'file'"
                )
    except (ValueError, HttpProcessingError) as exc:  # a broken body or part header
        raise MalformedRequest(f"the multipart body cannot be read: {exc}") from None
    raise MalformedRequest(f"a form has at most {MAX_FORM_PARTS} parts")


@dataclass(frozen=True, slots=True)
class BatchForm:
    model: str | None
    # In the order sent: a gallery name (an 'image' field) or an upload (a 'file' part).
    images: list[str | Upload]


async def read_batch_form(request: web.Request, max_images: int, max_bytes: int) -> BatchForm:
    """A batch as multipart/form-data: one ``model`` field and up to ``max_images`` ``file``
    parts and/or ``image`` fields, in at most ``max_bytes`` in all.  Streamed as ``read_form``
    is; the answer comes as soon as a limit is passed, before the rest is read."""
    length = request.content_length
    too_large = f"the batch is more than {max_bytes} bytes in all; send fewer or smaller images"
    if length is not None and length > max_bytes:
        raise PayloadTooLarge(f"the batch is {length} bytes; the limit is {max_bytes} in all")
    budget = _Budget(max_bytes, too_large)
    model: str | None = None
    images: list[str | Upload] = []
    try:
        reader = await request.multipart()
        # The model, the images, and one more part to tell "too many" from "just enough".
        for _ in range(max_images + 2):
            part = await reader.next()
            if part is None:
                return BatchForm(model, images)
            if not isinstance(part, BodyPartReader):
                raise MalformedRequest("nested multipart bodies are not accepted")
            if part.name == "model":
                if model is not None:
                    raise MalformedRequest("send one 'model' per batch")
                model = await _read_field(part, budget)
                continue
            if part.name not in ("file", "image"):
                raise MalformedRequest(
                    f"unknown form field {part.name!r}; a batch form has one 'model' and "
                    "'file' parts and/or 'image' fields"
                )
            if len(images) >= max_images:
                raise PayloadTooLarge(f"a batch has at most {max_images} images")
            if part.name == "image":
                images.append(await _read_field(part, budget))
            else:
                data = await _read_file(part, budget)
                # A browser sends an empty part for a file input left empty: no image.
                if data or part.filename:
                    images.append(Upload(display_name(part.filename), data))
    except (ValueError, HttpProcessingError) as exc:  # a broken body or part header
        raise MalformedRequest(f"the multipart body cannot be read: {exc}") from None
    raise PayloadTooLarge(f"a batch has at most {max_images} images")


async def _read_file(part: BodyPartReader, budget: _Budget) -> bytes:
    data = bytearray()
    while chunk := await part.read_chunk(_CHUNK):
        budget.spend(len(chunk))
        # Past the limit, keep counting (the budget stops us within FORM_OVERHEAD_BYTES) so
        # the answer can say how large the file was, but keep nothing more.
        if len(data) + len(chunk) <= MAX_UPLOAD_BYTES:
            data += chunk
        else:
            size = len(data) + len(chunk)
            while chunk := await part.read_chunk(_CHUNK):
                budget.spend(len(chunk))
                size += len(chunk)
            raise PayloadTooLarge(f"the upload is {size} bytes; the limit is {MAX_UPLOAD_TEXT}")
    return bytes(data)


async def _read_field(part: BodyPartReader, budget: _Budget) -> str:
    data = bytearray()
    while chunk := await part.read_chunk(_CHUNK):
        budget.spend(len(chunk))
        data += chunk
        if len(data) > MAX_FIELD_BYTES:
            raise MalformedRequest(
                f"form field {part.name!r} is longer than {MAX_FIELD_BYTES} bytes"
            )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedRequest(f"form field {part.name!r} is not UTF-8 text") from None


def display_name(raw: str | None) -> str:
    """The client's filename made safe to show: last path segment, no control or formatting
    characters (a right-to-left override can make 'gpj.exe' read as 'exe.jpg'), capped."""
    name = (raw or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if not unicodedata.category(ch).startswith("C")).strip()
    if name in ("", ".", ".."):
        return _UNNAMED
    if len(name) > MAX_FILENAME_CHARS:
        _, dot, ext = name.rpartition(".")
        keep = f"{dot}{ext}" if dot and len(ext) <= 10 else ""
        name = name[: MAX_FILENAME_CHARS - len(keep) - 1].rstrip() + "…" + keep
    return name


def check_image(data: bytes) -> str:
    """The upload's media type, once its bytes are known to be an accepted image that decodes.

    CPU-bound (up to a second for a 40 MP image): run it off the event loop, as
    ``gateway/checks.py`` does.
    """
    allowed = ", ".join(FORMAT_NAMES.values())
    try:
        with Image.open(io.BytesIO(data), formats=DECODERS) as image:
            kind = image.format or ""
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise ImageTooLarge(
                    f"the image is {width}x{height} = {width * height:,} pixels; "
                    f"the limit is {MAX_PIXELS:,}"
                )
            if kind in JPEG_FORMATS:
                if refusal := jpeg_refusal(data):
                    raise ImageUnreadable(refusal)
                # Decoding at 1/8 scale reads every byte of the scan for a fraction of the work.
                image.draft("RGB", (1, 1))
                image.load()
            elif kind == "PNG":
                # Checks the CRC of every chunk: truncation and corruption show, without
                # inflating 160 MB of pixels that the replica decodes anyway.
                image.verify()
            else:
                image.load()
    except Image.DecompressionBombError:
        raise ImageTooLarge(f"the image has more than {MAX_PIXELS:,} pixels") from None
    except UnidentifiedImageError:
        claimed = _claimed_format(data)
        if claimed is None:
            raise UnsupportedMediaType(
                f"the upload is not an image in an accepted format; allowed: {allowed}"
            ) from None
        raise ImageUnreadable(
            f"the upload starts like a {FORMAT_NAMES[claimed]} image but cannot be read"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        raise ImageUnreadable(f"the image cannot be decoded: {exc}") from None
    if kind not in UPLOAD_FORMATS:  # DECODERS above makes this unreachable; kept as a guard
        raise UnsupportedMediaType(f"the upload is {kind}; allowed: {allowed}")
    return UPLOAD_FORMATS[kind]


def _claimed_format(data: bytes) -> str | None:
    """The accepted format whose signature the bytes start with, if any: tells a damaged
    JPEG (422) from something that never was one (415)."""
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None
