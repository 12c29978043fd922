"""A small synchronous client for the imgq HTTP API (standard library only; the module is not
named ``http`` so that it can never shadow the standard library's package).

Every failure a user can cause or meet becomes one of two exceptions, so the
command line can report it in one line: ``ApiError`` when the server answered
with an error (usually an RFC 9457 problem), ``Unreachable`` when there was no
answer at all.
"""

from __future__ import annotations

import http.client
import json
import mimetypes
import socket
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from typing import Any

# Seconds to wait for an ordinary answer; long-polls add the time they asked the server to hold.
DEFAULT_TIMEOUT = 30.0
USER_AGENT = "imgq-cli/0.1"


class ApiError(Exception):
    """The server answered with an error status."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail


class Unreachable(Exception):
    """No answer: connection refused, name not resolved, timed out, or not an HTTP server."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach the imgq server at {url}: {reason}")
        self.url = url
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: Any


@dataclass(frozen=True, slots=True)
class Upload:
    """One file part of a multipart/form-data body."""

    field: str
    filename: str
    data: bytes
    content_type: str | None = None


class Client:
    def __init__(
        self, base_url: str, token: str | None = None, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        parts = urllib.parse.urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout

    # -- the API --------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        return _object(self.get("/info").body)

    def readiness(self) -> tuple[bool, str]:
        """Whether the gateway says it is ready, and why not when it is not."""
        try:
            self.get("/readyz")
        except ApiError as exc:
            if exc.status == 503:
                return False, exc.detail
            raise
        return True, "ready"

    def submit(self, model: str, image: str, *, fresh: bool = False) -> dict[str, Any]:
        """Classify a gallery image; returns the queued job.  ``fresh`` asks the server not to
        answer from an earlier result for the same model and image bytes."""
        answer = self.post_json(
            "/classifications", {"model": model, "image": image}, _fresh_headers(fresh)
        )
        return _object(answer.body)

    def upload(
        self, model: str, filename: str, data: bytes, *, fresh: bool = False
    ) -> dict[str, Any]:
        """Classify an image file sent in the request (multipart fields ``model`` and ``file``)."""
        answer = self.post_multipart(
            "/classifications",
            {"model": model},
            [Upload("file", filename, data)],
            _fresh_headers(fresh),
        )
        return _object(answer.body)

    def delete(self, job_id: str) -> dict[str, Any] | None:
        """Cancel a queued job (returns it, now cancelled) or forget a finished one (None)."""
        answer = self.request("DELETE", _job_path(job_id))
        return _object(answer.body) if answer.body is not None else None

    def job(self, job_id: str, wait: float = 0.0, since: str | None = None) -> dict[str, Any]:
        """The job; with ``wait``, the server holds the answer until it is final (or its
        status is no longer ``since``) or ``wait`` seconds pass."""
        query: dict[str, str] = {}
        if wait > 0:
            query["wait"] = f"{wait:g}"
            if since is not None:
                query["since"] = since
        path = _job_path(job_id)
        if query:
            path += "?" + urllib.parse.urlencode(query)
        return _object(self.get(path, timeout=self.timeout + wait).body)

    # -- transport ------------------------------------------------------------------------

    def get(self, path: str, timeout: float | None = None) -> Answer:
        return self.request("GET", path, timeout=timeout)

    def post_json(self, path: str, payload: Any, headers: dict[str, str] | None = None) -> Answer:
        body = json.dumps(payload).encode()
        return self.request(
            "POST", path, body, {"Content-Type": "application/json", **(headers or {})}
        )

    def post_multipart(
        self,
        path: str,
        fields: dict[str, str],
        files: list[Upload],
        headers: dict[str, str] | None = None,
    ) -> Answer:
        content_type, body = encode_multipart(fields, files)
        return self.request("POST", path, body, {"Content-Type": content_type, **(headers or {})})

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> Answer:
        all_headers = {"Accept": "application/json", "User-Agent": USER_AGENT, **(headers or {})}
        if self.token:
            all_headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(
            self.base_url + path, data=body, method=method, headers=all_headers
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as response:
                return Answer(response.status, _decode(response.read()))
        except urllib.error.HTTPError as exc:
            with exc:
                content_type = exc.headers.get("Content-Type")
                error = _api_error(exc.code, exc.reason, content_type, exc.read())
            raise error from None
        except urllib.error.URLError as exc:
            raise Unreachable(self.base_url, _reason(exc.reason)) from None
        except (OSError, http.client.HTTPException) as exc:  # timeouts, resets, garbled answers
            raise Unreachable(self.base_url, _reason(exc)) from None
        except ValueError as exc:  # not JSON: whatever answered is not an imgq gateway
            raise Unreachable(self.base_url, f"the answer is not JSON ({exc})") from None


def encode_multipart(fields: dict[str, str], files: list[Upload]) -> tuple[str, bytes]:
    """A multipart/form-data body (RFC 7578); returns its Content-Type and the bytes."""
    boundary = f"imgq-{uuid.uuid4().hex}"
    lines: list[bytes] = []
    for name, value in fields.items():
        lines += [
            f"--{boundary}".encode(),
            f'Content-Disposition: form-data; name="{_quote(name)}"'.encode(),
            b"",
            value.encode(),
        ]
    for upload in files:
        content_type = (
            upload.content_type
            or mimetypes.guess_type(upload.filename)[0]
            or "application/octet-stream"
        )
        lines += [
            f"--{boundary}".encode(),
            (
                f'Content-Disposition: form-data; name="{_quote(upload.field)}"; '
                f'filename="{_quote(upload.filename)}"'
            ).encode(),
            f"Content-Type: {content_type}".encode(),
            b"",
            upload.data,
        ]
    lines += [f"--{boundary}--".encode(), b""]
    return f"multipart/form-data; boundary={boundary}", b"\r\n".join(lines)


def _job_path(job_id: str) -> str:
    return f"/classifications/{urllib.parse.quote(job_id, safe='')}"


def _fresh_headers(fresh: bool) -> dict[str, str]:
    return {"Cache-Control": "no-cache"} if fresh else {}


def _quote(value: str) -> str:
    # RFC 7578 section 4.2: quotes and line breaks in names are percent-encoded.
    return value.replace("\\", "\\\\").replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


def _decode(raw: bytes) -> Any:
    return json.loads(raw) if raw else None


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ValueError(f"expected a JSON object, got {type(body).__name__}")
    return body


def _api_error(status: int, reason: str, content_type: str | None, raw: bytes) -> ApiError:
    """An error answer: a problem document's ``detail`` if there is one, else the status line."""
    code, detail = "http_error", f"HTTP {status} {reason}".strip()
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
    return ApiError(status, code, detail)


def _reason(reason: object) -> str:
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused (is the gateway running?)"
    if isinstance(reason, socket.gaierror):
        return f"host not found ({reason.strerror})"
    if isinstance(reason, TimeoutError):
        return "no answer in time"
    if isinstance(reason, http.client.RemoteDisconnected):
        return "the server closed the connection without answering"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return str(reason) or type(reason).__name__
