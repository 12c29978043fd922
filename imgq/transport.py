"""The synchronous transport (standard library only): requests in, JSON out.

Every failure becomes ``ApiError`` (the server answered with an error) or ``Unreachable``
(no answer at all).  ``imgq.Client`` turns the JSON into typed values; the command line
uses the JSON as it is.  The module is not named ``http`` so that it can never shadow the
standard library's package.
"""

from __future__ import annotations

import http.client
import json
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from imgq import wire
from imgq.errors import ApiError, Unreachable

# Seconds to wait for an ordinary answer; long-polls add the time they asked the server to hold.
DEFAULT_TIMEOUT = 30.0
USER_AGENT = "imgq-client/0.1"


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: Any


class Transport:
    def __init__(
        self, base_url: str, token: str | None = None, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        parts = urllib.parse.urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout

    # -- the API, as JSON -------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        return wire.json_object(self.get("/info").body)

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
        """Classify a gallery image; returns the queued job."""
        return self.submit_image(model, image, fresh=fresh)

    def upload(
        self, model: str, filename: str, data: bytes, *, fresh: bool = False
    ) -> dict[str, Any]:
        """Classify an image file sent in the request (multipart fields ``model`` and ``file``)."""
        return self.submit_image(model, (filename, data), fresh=fresh)

    def submit_image(
        self, model: str, image: wire.ImageInput, *, fresh: bool = False
    ) -> dict[str, Any]:
        content_type, body = wire.submission(model, image)
        headers = {"Content-Type": content_type, **wire.fresh_headers(fresh)}
        return wire.json_object(self.request("POST", "/classifications", body, headers).body)

    def submit_batch(
        self, model: str, images: Sequence[wire.ImageInput], *, fresh: bool = False
    ) -> dict[str, Any]:
        """One job per image, in one request (POST /batches); returns the batch."""
        content_type, body = wire.batch_submission(model, images)
        headers = {"Content-Type": content_type, **wire.fresh_headers(fresh)}
        return wire.json_object(self.request("POST", "/batches", body, headers).body)

    def delete(self, job_id: str) -> dict[str, Any] | None:
        """Cancel a queued job (returns it, now cancelled) or forget a finished one (None)."""
        answer = self.request("DELETE", wire.job_path(job_id))
        return wire.json_object(answer.body) if answer.body is not None else None

    def job(self, job_id: str, wait: float = 0.0, since: str | None = None) -> dict[str, Any]:
        """The job; with ``wait``, the server holds the answer until it is final (or its
        status is no longer ``since``) or ``wait`` seconds pass."""
        path = wire.job_path(job_id, wait=wait, since=since)
        return wire.json_object(self.get(path, timeout=self.timeout + wait).body)

    def batch(self, batch_id: str, wait: float = 0.0) -> dict[str, Any]:
        """The batch; with ``wait``, once every job is final or ``wait`` seconds pass."""
        path = wire.batch_path(batch_id, wait=wait)
        return wire.json_object(self.get(path, timeout=self.timeout + wait).body)

    def events(self, job_id: str) -> Iterator[dict[str, Any]]:
        """The job at once, then at each change until it is final (server-sent events)."""
        req = self._request("GET", wire.events_path(job_id), None, {"Accept": "text/event-stream"})
        parser = wire.EventParser()
        try:
            # No read timeout beyond the usual: the server sends a keep-alive every 15 s.
            with urllib.request.urlopen(req, timeout=self.timeout) as response:
                for raw in response:
                    job = parser.feed(raw.decode("utf-8"))
                    if job is not None:
                        yield job
        except urllib.error.HTTPError as exc:
            raise self._error(exc) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            raise self._unreachable(exc) from None

    # -- transport --------------------------------------------------------------------------

    def get(self, path: str, timeout: float | None = None) -> Answer:
        return self.request("GET", path, timeout=timeout)

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> Answer:
        req = self._request(method, path, body, {"Accept": "application/json", **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as response:
                raw = response.read()
                return Answer(response.status, json.loads(raw) if raw else None)
        except urllib.error.HTTPError as exc:
            raise self._error(exc) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            raise self._unreachable(exc) from None
        except ValueError as exc:  # not JSON: whatever answered is not an imgq gateway
            raise Unreachable(self.base_url, f"the answer is not JSON ({exc})") from None

    def _request(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str]
    ) -> urllib.request.Request:
        all_headers = {"User-Agent": USER_AGENT, **headers}
        if self.token:
            all_headers["Authorization"] = f"Bearer {self.token}"
        return urllib.request.Request(
            self.base_url + path, data=body, method=method, headers=all_headers
        )

    def _error(self, exc: urllib.error.HTTPError) -> ApiError:
        with exc:
            return wire.api_error(exc.code, exc.reason, exc.headers.get("Content-Type"), exc.read())

    def _unreachable(self, exc: Exception) -> Unreachable:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        return Unreachable(self.base_url, describe(reason))


def describe(reason: object) -> str:
    """A connection failure in a few words."""
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
