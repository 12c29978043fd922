"""One error hierarchy for the whole project.

Every error a client can cause or see is an ``ImgqError`` with a stable,
machine-readable ``code``.  The gateway maps these classes to HTTP statuses in
one place (``gateway/problems.py``); the classifier puts ``code`` and the
message into failed-job events.
"""

from __future__ import annotations

import math
from collections.abc import Iterable


class ImgqError(Exception):
    """Root of every error imgq raises on purpose."""

    code = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class SettingsError(ImgqError):
    """An environment variable has a value the service cannot use."""

    code = "bad_setting"


class MalformedRequest(ImgqError):
    """The request body is not what the API accepts (not JSON, wrong fields, wrong types)."""

    code = "malformed_request"


class UnknownModel(ImgqError):
    """The request names a model that is not on offer."""

    code = "unknown_model"

    def __init__(self, name: object, allowed: Iterable[str]) -> None:
        self.allowed = sorted(allowed)
        super().__init__(f"unknown model {name!r}; allowed: {', '.join(self.allowed)}")


class UnknownImage(ImgqError):
    """The request names a gallery image that does not exist."""

    code = "unknown_image"

    def __init__(self, name: object, allowed: Iterable[str]) -> None:
        self.allowed = sorted(allowed)
        super().__init__(f"unknown image {name!r}; allowed: {', '.join(self.allowed)}")


class JobNotFound(ImgqError):
    """No job with this ID is known here."""

    code = "job_not_found"

    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job with ID {job_id!r}")


class JobGone(ImgqError):
    """The job was known but its result is gone: past retention, or deleted by a client."""

    code = "job_gone"

    def __init__(self, job_id: str, reason: str) -> None:
        self.reason = reason
        super().__init__(f"job {job_id!r} is gone ({reason}); results are kept for a limited time")


class BatchNotFound(ImgqError):
    """No batch with this ID is known here (batches live in the gateway that accepted them)."""

    code = "batch_not_found"

    def __init__(self, batch_id: str) -> None:
        super().__init__(f"no batch with ID {batch_id!r} on this gateway")


class EmptyBatch(ImgqError):
    """A batch request names no image at all."""

    code = "empty_batch"


class CallbackRefused(ImgqError):
    """The request's ``callback_url`` is not one the gateway will POST to: not an http(s) URL,
    an address that is not public (unless the operator allowed its network), a host that does
    not resolve, or no secret to sign callbacks with."""

    code = "callback_refused"


class JobConflict(ImgqError):
    """The request cannot apply to the job in its current state (e.g. cancel a started job)."""

    code = "job_conflict"


class IdempotencyKeyReused(ImgqError):
    """An Idempotency-Key came back with a different request than the one it first named."""

    code = "idempotency_key_reused"


class NotFound(ImgqError):
    """A path that names nothing we serve (including any path that leaves the gallery)."""

    code = "not_found"


class BrokerUnavailable(ImgqError):
    """The broker could not take or confirm the job in time; the client may retry."""

    code = "broker_unavailable"


class TooManyRequests(ImgqError):
    """One client is over its share (jobs in flight, body bytes, submissions per second, open
    long-polls or streams)."""

    code = "too_many_requests"

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def retry_after_header(seconds: float) -> int:
    """``seconds`` as a Retry-After header says it: whole seconds, at least one.  A message
    that says when to retry uses this too, so the two always agree."""
    return max(1, math.ceil(seconds))


class QueueFull(ImgqError):
    """The work queue is at its bound; the client should retry later."""

    code = "queue_full"


class UploadsBusy(ImgqError):
    """Every upload check thread and every place in line for one is taken; retry shortly."""

    code = "uploads_busy"


class NotReady(ImgqError):
    """The gateway has not finished rebuilding its results from the event log yet."""

    code = "not_ready"


class Unresponsive(ImgqError):
    """A process of a gateway that runs several (IMGQ_GATEWAY_PROCESSES) does not answer."""

    code = "unresponsive"


class MessageError(ImgqError):
    """A broker message does not follow the schema in ``shared/messages.py``."""

    code = "bad_message"


class ImageDecodeError(ImgqError):
    """The image bytes are not a picture Pillow can decode."""

    code = "image_decode_failed"


class JobTimedOut(ImgqError):
    """A job's decode and inference ran past the replica's time limit (IMGQ_JOB_TIME_LIMIT)."""

    code = "time_limit_exceeded"


class ModelExportFailed(ImgqError):
    """A replica could not get a model it must serve into its model cache (classifier start-up
    only: never sent to a client)."""

    code = "model_export_failed"


class Unauthorized(ImgqError):
    """The API needs a bearer token (IMGQ_API_TOKENS is set) and none of them was sent."""

    code = "unauthorized"


class PayloadTooLarge(ImgqError):
    """The upload (or the request body around it) is over the byte limit."""

    code = "payload_too_large"


class UnsupportedMediaType(ImgqError):
    """The uploaded bytes are not in one of the image formats the service accepts."""

    code = "unsupported_media_type"


class UnsupportedContentType(ImgqError):
    """The request body's Content-Type is not one the operation reads (e.g. text/plain)."""

    code = "unsupported_content_type"

    def __init__(self, given: str, allowed: Iterable[str]) -> None:
        self.allowed = list(allowed)
        super().__init__(
            f"a body of type {given!r} is not accepted; send one of: {', '.join(self.allowed)}"
        )


class ImageTooLarge(ImgqError):
    """The upload has more pixels than the limit: likely a decompression bomb, never a photo
    worth classifying at a few hundred pixels."""

    code = "image_too_large"


class ImageUnreadable(ImgqError):
    """The upload looks like an accepted format but its bytes do not decode."""

    code = "image_unreadable"


class RequestTimeout(ImgqError):
    """The request body did not arrive within the gateway's time for it (IMGQ_BODY_TIMEOUT)."""

    code = "request_timeout"
