"""The library's exceptions: one root, and one small class per kind of failure."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

# Which limit a request ran into: setting up the connection, a silence while the answer was
# coming, or the whole request's time.
Phase = Literal["connect", "read", "total"]


class ImgqClientError(Exception):
    """Root of every error the imgq client raises on purpose."""


class ApiError(ImgqClientError):
    """The server answered with an error status (usually an RFC 9457 problem document).

    ``code`` is the problem's stable code, ``detail`` its explanation, ``headers`` the
    answer's headers (lower-case names: ``retry-after``, ...), ``request_id`` the ID the
    request went out with (the server's own ``X-Request-ID`` if it sent one back)."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        problem: dict[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.problem = problem or {}
        self.headers: Mapping[str, str] = headers or {}
        self.request_id = request_id


class Unreachable(ImgqClientError):
    """No answer: connection refused, name not resolved, the connection dropped, or whatever
    answered is not an imgq server.

    ``sent`` is False when the request certainly never reached the server (the connection
    could not be made), so even a request that is not safe to repeat may be sent again."""

    def __init__(self, url: str, reason: str, *, sent: bool = True) -> None:
        super().__init__(f"cannot reach the imgq server at {url}: {reason}")
        self.url = url
        self.reason = reason
        self.sent = sent


class TimedOut(Unreachable):
    """No answer in time: ``phase`` says which limit (``connect``, ``read`` or ``total``,
    see ``imgq.Timeouts``) ran out after ``seconds``."""

    def __init__(self, url: str, phase: Phase, seconds: float) -> None:
        what = {
            "connect": "no connection",
            "read": "the server went silent",
            "total": "the answer took too long",
        }[phase]
        super().__init__(url, f"{what} ({phase} timeout, {seconds:g} s)", sent=phase != "connect")
        self.phase: Phase = phase
        self.seconds = seconds


class ImageReadError(ImgqClientError):
    """A local image file could not be read, so it was never sent."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: cannot read it: {reason}")
        self.path = path
        self.reason = reason
