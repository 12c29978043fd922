"""The HTTP encoding of the imgq API, without any I/O beyond reading local image files:
request bodies, paths, idempotency keys, problem documents, ``Retry-After`` and server-sent
events.  The transports only move the bytes."""

from __future__ import annotations

import email.utils
import hashlib
import json
import mimetypes
import os
import time
import urllib.parse
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imgq.errors import ApiError, ImageReadError

# What may name an image: a str is a gallery image on the server; a path (os.PathLike) is a
# local file to upload; bytes are uploaded as they are; (filename, bytes) names the upload.
ImageInput = str | os.PathLike[str] | bytes | tuple[str, bytes]

# Shown for uploads given as bare bytes.
DEFAULT_FILENAME = "image"
# The gateway takes keys of up to 255 characters, and a batch's up to 250 (it appends
# '#<index>' for each image's job); ours are far shorter.
KEY_PREFIX = "imgq-"


@dataclass(frozen=True, slots=True)
class Upload:
    """One file part of a multipart/form-data body."""

    field: str
    filename: str
    data: bytes
    content_type: str | None = None


def as_upload(image: ImageInput) -> Upload | None:
    """The upload an image input stands for; None for a gallery name.  Reads a path."""
    if isinstance(image, str):
        return None
    if isinstance(image, bytes):
        return Upload("file", DEFAULT_FILENAME, image)
    if isinstance(image, tuple):
        filename, data = image
        return Upload("file", filename, data)
    path = Path(image)
    try:
        return Upload("file", path.name, path.read_bytes())
    except OSError as exc:
        raise ImageReadError(str(image), exc.strerror or type(exc).__name__) from None


def size_of(image: ImageInput) -> int:
    """Bytes the image adds to a request (a gallery name: none to speak of)."""
    if isinstance(image, str):
        return len(image)
    if isinstance(image, bytes):
        return len(image)
    if isinstance(image, tuple):
        return len(image[1])
    try:
        return os.stat(image).st_size
    except OSError:
        return 0  # reading it will say what is wrong


def display_name(image: ImageInput, index: int) -> str:
    """How an image is shown: the gallery name, the path, the upload's file name."""
    if isinstance(image, str):
        return image
    if isinstance(image, bytes):
        return f"<bytes #{index}>"
    if isinstance(image, tuple):
        return image[0]
    return os.fspath(image)


def digest(image: str | Upload) -> str:
    """What identifies an image's content: its bytes' SHA-256, or the gallery name."""
    if isinstance(image, str):
        return "gallery:" + hashlib.sha256(image.encode()).hexdigest()
    return "sha256:" + hashlib.sha256(image.data).hexdigest()


def idempotency_key(run_id: str, model: str, digests: Iterable[str]) -> str:
    """The key a submission goes out with: the same run, model and images give the same key,
    so a retried POST returns the jobs the first one made instead of making more."""
    h = hashlib.sha256()
    for part in (run_id, model, *digests):
        h.update(part.encode())
        h.update(b"\0")
    return KEY_PREFIX + h.hexdigest()


def new_run_id() -> str:
    return uuid.uuid4().hex


def submission(
    model: str, image: str | Upload, callback_url: str | None = None
) -> tuple[str, bytes]:
    """POST /classifications: (Content-Type, body) for one image, with the URL the server is
    to call back when the job is final, if any."""
    callback = {} if callback_url is None else {"callback_url": callback_url}
    if isinstance(image, str):
        return json_body({"model": model, "image": image, **callback})
    return encode_multipart([("model", model), *callback.items()], [image])


def batch_submission(model: str, images: Sequence[ImageInput]) -> tuple[str, bytes]:
    """POST /batches: JSON when every image is a gallery name, else one multipart form with
    the images in order (names as 'image' fields, the rest as 'file' parts).  Reads paths."""
    return read_batch(model, [name_or_upload(image) for image in images])


def name_or_upload(image: ImageInput) -> str | Upload:
    upload = as_upload(image)
    return upload if upload is not None else str(image)


def read_batch(
    model: str, images: Sequence[str | Upload], callback_url: str | None = None
) -> tuple[str, bytes]:
    callback = {} if callback_url is None else {"callback_url": callback_url}
    if all(isinstance(image, str) for image in images):
        return json_body({"model": model, "images": list(images), **callback})
    parts = [image if isinstance(image, Upload) else ("image", image) for image in images]
    return encode_multipart([("model", model), *callback.items()], parts)


def json_body(payload: Any) -> tuple[str, bytes]:
    return "application/json", json.dumps(payload).encode()


def encode_multipart(
    fields: Mapping[str, str] | Iterable[tuple[str, str]],
    parts: Iterable[Upload | tuple[str, str]],
) -> tuple[str, bytes]:
    """A multipart/form-data body (RFC 7578): the ``fields``, then ``parts`` (uploads and more
    text fields) in order.  Returns its Content-Type and the bytes."""
    boundary = f"imgq-{uuid.uuid4().hex}"
    lines: list[bytes] = []
    items = fields.items() if isinstance(fields, Mapping) else fields
    for part in [*items, *parts]:
        lines.append(f"--{boundary}".encode())
        if isinstance(part, Upload):
            content_type = (
                part.content_type
                or mimetypes.guess_type(part.filename)[0]
                or "application/octet-stream"
            )
            lines += [
                (
                    f'Content-Disposition: form-data; name="{_quote(part.field)}"; '
                    f'filename="{_quote(part.filename)}"'
                ).encode(),
                f"Content-Type: {content_type}".encode(),
                b"",
                part.data,
            ]
        else:
            name, value = part
            lines += [
                f'Content-Disposition: form-data; name="{_quote(name)}"'.encode(),
                b"",
                value.encode(),
            ]
    lines += [f"--{boundary}--".encode(), b""]
    return f"multipart/form-data; boundary={boundary}", b"\r\n".join(lines)


def _quote(value: str) -> str:
    # RFC 7578 section 4.2: quotes and line breaks in names are percent-encoded.
    return value.replace("\\", "\\\\").replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


def job_path(job_id: str, *, wait: float = 0.0, since: str | None = None) -> str:
    return _with_wait(f"/classifications/{urllib.parse.quote(job_id, safe='')}", wait, since)


def batch_path(batch_id: str, *, wait: float = 0.0) -> str:
    return _with_wait(f"/batches/{urllib.parse.quote(batch_id, safe='')}", wait, None)


def events_path(job_id: str) -> str:
    return f"/classifications/{urllib.parse.quote(job_id, safe='')}/events"


def _with_wait(path: str, wait: float, since: str | None) -> str:
    query: dict[str, str] = {}
    if wait > 0:
        query["wait"] = f"{wait:g}"
        if since is not None:
            query["since"] = since
    return path + "?" + urllib.parse.urlencode(query) if query else path


def fresh_headers(fresh: bool) -> dict[str, str]:
    """``fresh`` asks the server not to answer from an earlier result for the same bytes."""
    return {"Cache-Control": "no-cache"} if fresh else {}


def api_error(
    status: int,
    reason: str,
    headers: Mapping[str, str],
    raw: bytes,
    request_id: str | None = None,
) -> ApiError:
    """An error answer: a problem document's ``detail`` if there is one, else the status line.
    ``headers`` have lower-case names."""
    code, detail = "http_error", f"HTTP {status} {reason}".strip()
    problem: Any = None
    if "json" in headers.get("content-type", ""):
        try:
            problem = json.loads(raw)
        except ValueError:
            problem = None
        if isinstance(problem, dict):
            if isinstance(problem.get("detail"), str) and problem["detail"]:
                detail = problem["detail"]
            elif isinstance(problem.get("title"), str) and problem["title"]:
                detail = problem["title"]
            if isinstance(problem.get("code"), str):
                code = problem["code"]
    return ApiError(
        status,
        code,
        detail,
        problem if isinstance(problem, dict) else None,
        headers,
        headers.get("x-request-id") or request_id,
    )


def retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """``Retry-After`` in seconds from now (RFC 9110: delay-seconds or an HTTP date)."""
    raw = headers.get("retry-after", "").strip()
    if not raw:
        return None
    if raw.isdigit():
        return float(raw)
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def json_loads(raw: bytes) -> Any:
    return json.loads(raw)


def json_object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ValueError(f"expected a JSON object, got {type(body).__name__}")
    return body


class EventParser:
    """Server-sent events, fed line by line: returns the JSON of each ``job`` event, and
    keeps the last event ID (``last_id``) to resume from."""

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None
        self.last_id: str | None = None

    def feed(self, line: str) -> dict[str, Any] | None:
        line = line.rstrip("\r\n")
        if line:
            if line.startswith(":"):
                return None  # a keep-alive comment
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                self._event = value
            elif name == "data":
                self._data.append(value)
            elif name == "id" and "\0" not in value:
                self._id = value
            return None
        event, data = self._event or "message", "\n".join(self._data)
        self._event, self._data = "", []
        if self._id is not None:
            self.last_id, self._id = self._id, None
        if event != "job" or not data:
            return None
        return json_object(json.loads(data))
