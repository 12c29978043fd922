"""The one place where errors become HTTP responses (RFC 9457 problem details)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from shared.errors import (
    BatchNotFound,
    BrokerUnavailable,
    CallbackRefused,
    EmptyBatch,
    IdempotencyKeyReused,
    ImageTooLarge,
    ImageUnreadable,
    ImgqError,
    JobConflict,
    JobGone,
    JobNotFound,
    MalformedRequest,
    NotFound,
    NotReady,
    PayloadTooLarge,
    QueueFull,
    RequestTimeout,
    TooManyRequests,
    Unauthorized,
    UnknownImage,
    UnknownModel,
    Unresponsive,
    UnsupportedContentType,
    UnsupportedMediaType,
    UploadsBusy,
    retry_after_header,
)

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
# Seconds a client should wait before retrying a 503: about one broker reconnect.
RETRY_AFTER = 2

_STATUS: dict[type[ImgqError], int] = {
    MalformedRequest: 400,
    Unauthorized: 401,
    JobNotFound: 404,
    BatchNotFound: 404,
    NotFound: 404,
    JobConflict: 409,
    JobGone: 410,
    RequestTimeout: 408,
    PayloadTooLarge: 413,
    ImageTooLarge: 413,
    UnsupportedMediaType: 415,
    UnsupportedContentType: 415,
    UnknownModel: 422,
    ImageUnreadable: 422,
    UnknownImage: 422,
    EmptyBatch: 422,
    IdempotencyKeyReused: 422,
    CallbackRefused: 422,
    BrokerUnavailable: 503,
    QueueFull: 503,
    UploadsBusy: 503,
    TooManyRequests: 429,
    NotReady: 503,
    Unresponsive: 503,
}
_TITLES = {
    409: "Conflict",
    410: "Gone",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    503: "Service Unavailable",
    500: "Internal Server Error",
}


def problem(
    status: int, code: str, detail: str, headers: dict[str, str] | None = None, **extra: Any
) -> web.Response:
    body = {
        "type": f"urn:imgq:problem:{code}",
        "title": _TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
        "code": code,
        **extra,
    }
    return web.Response(
        status=status, body=orjson.dumps(body), content_type=PROBLEM_JSON, headers=headers
    )


def from_error(error: ImgqError) -> web.Response:
    status = next((s for cls, s in _STATUS.items() if isinstance(error, cls)), 500)
    extra: dict[str, Any] = {}
    if isinstance(error, UnknownModel | UnknownImage | UnsupportedContentType):
        extra["allowed"] = error.allowed
    headers: dict[str, str] | None = None
    if status == 503:
        headers = {"Retry-After": str(RETRY_AFTER)}
    elif isinstance(error, TooManyRequests):
        headers = {"Retry-After": str(retry_after_header(error.retry_after))}
    elif status == 401:
        # RFC 6750: tells the client which scheme to use.
        headers = {"WWW-Authenticate": "Bearer"}
    return problem(status, error.code, error.message, headers, **extra)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ImgqError as error:
        return from_error(error)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(
            exc.status, "http_error"
        )
        detail = exc.text if exc.status not in (404, 405) else f"{exc.reason}: {request.path}"
        headers = None
        if isinstance(exc, web.HTTPMethodNotAllowed):
            # RFC 9110 requires it on a 405: the methods this path does take.
            headers = {"Allow": ", ".join(sorted(exc.allowed_methods))}
        return problem(exc.status, code, detail or exc.reason, headers)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return problem(500, "internal_error", "an unexpected error occurred; it has been logged")
