"""The library's exceptions: one root, two kinds of failure."""

from __future__ import annotations

from typing import Any


class ImgqClientError(Exception):
    """Root of every error the imgq client raises on purpose."""


class ApiError(ImgqClientError):
    """The server answered with an error status (usually an RFC 9457 problem document):
    ``code`` is the problem's stable code, ``detail`` its human-readable explanation."""

    def __init__(
        self, status: int, code: str, detail: str, problem: dict[str, Any] | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.problem = problem or {}


class Unreachable(ImgqClientError):
    """No answer: connection refused, name not resolved, timed out, or not an imgq server."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach the imgq server at {url}: {reason}")
        self.url = url
        self.reason = reason
