"""What both clients send and read, without any I/O: request bodies, paths, problem
documents and server-sent events.  The sync and the asyncio client only move the bytes."""

from __future__ import annotations

import json
import mimetypes
import os
import urllib.parse
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imgq.errors import ApiError

# What may name an image: a str is a gallery image on the server; a path (os.PathLike) is a
# local file to upload; bytes are uploaded as they are; (filename, bytes) names the upload.
ImageInput = str | os.PathLike[str] | bytes | tuple[str, bytes]

# Shown for uploads given as bare bytes.
DEFAULT_FILENAME = "image"


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
    return Upload("file", path.name, path.read_bytes())


def submission(model: str, image: ImageInput) -> tuple[str, bytes]:
    """POST /classifications: (Content-Type, body) for one image."""
    upload = as_upload(image)
    if upload is None:
        return json_body({"model": model, "image": image})
    return encode_multipart([("model", model)], [upload])


def batch_submission(model: str, images: Sequence[ImageInput]) -> tuple[str, bytes]:
    """POST /batches: JSON when every image is a gallery name, else one multipart form with
    the images in order (names as 'image' fields, the rest as 'file' parts)."""
    if all(isinstance(image, str) for image in images):
        return json_body({"model": model, "images": list(images)})
    fields: list[tuple[str, str]] = [("model", model)]
    parts: list[tuple[str, str] | Upload] = []
    for image in images:
        upload = as_upload(image)
        parts.append(upload if upload is not None else ("image", str(image)))
    return encode_multipart(fields, parts)


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


def api_error(status: int, reason: str, content_type: str | None, raw: bytes) -> ApiError:
    """An error answer: a problem document's ``detail`` if there is one, else the status line."""
    code, detail = "http_error", f"HTTP {status} {reason}".strip()
    problem: Any = None
    if content_type and "json" in content_type:
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
    return ApiError(status, code, detail, problem if isinstance(problem, dict) else None)


def json_loads(raw: bytes) -> Any:
    return json.loads(raw)


def json_object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ValueError(f"expected a JSON object, got {type(body).__name__}")
    return body


class EventParser:
    """Server-sent events, fed line by line: yields the JSON of each ``job`` event."""

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []

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
            return None
        event, data = self._event or "message", "\n".join(self._data)
        self._event, self._data = "", []
        if event != "job" or not data:
            return None
        return json_object(json.loads(data))
