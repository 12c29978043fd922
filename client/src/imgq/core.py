"""The client core: every request built once, the retry policy applied once, and the rules of
when a job (or a batch) is final written once, as operations (``imgq.steps``) that the sync
and the asyncio client both run.  No I/O happens here."""

from __future__ import annotations

import dataclasses
import logging
import random
import time
import urllib.parse
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from imgq import http_wire
from imgq.config import STREAM_KEEPALIVE, Retries, Timeouts
from imgq.errors import ApiError, ImgqClientError, Unreachable
from imgq.http_wire import ImageInput, Upload
from imgq.steps import Call, Emit, Operation, ReadLine, Request, Response, Sleep
from imgq.types import Batch, Info, Job, Limits
from imgq.version import USER_AGENT

log = logging.getLogger("imgq")

# Answers that say the server did nothing with the request (too many requests from us, or
# not able to take it right now): any request may be sent again.
REFUSED_FOR_NOW = frozenset({429, 503})
# A proxy's answers when no gateway answered (502) or none in time (504): the request may
# have reached one, so only a request that is safe to repeat is sent again.
PROXY_GAVE_UP = frozenset({502, 504})
# A stream's read timeout never below this: the server's keep-alives come every 15 s.
STREAM_READ_MIN = STREAM_KEEPALIVE + 5.0


@dataclass(frozen=True, slots=True)
class Encoded:
    """A submission's body, ready to send, and the Idempotency-Key it goes with."""

    content_type: str
    body: bytes
    key: str


def encode_job(
    model: str, image: ImageInput, run_id: str, callback_url: str | None = None
) -> Encoded:
    """POST /classifications for one image (reads a path: run it as a ``Call``)."""
    return encode_read_job(model, http_wire.name_or_upload(image), run_id, callback_url)


def encode_read_job(
    model: str, image: str | Upload, run_id: str, callback_url: str | None = None
) -> Encoded:
    """POST /classifications for an image already read."""
    key = http_wire.idempotency_key(run_id, model, [http_wire.digest(image)])
    return Encoded(*http_wire.submission(model, image, callback_url), key)


def encode_batch(
    model: str, images: Sequence[str | Upload], run_id: str, callback_url: str | None = None
) -> Encoded:
    """POST /batches for images already read."""
    key = http_wire.idempotency_key(run_id, model, [http_wire.digest(i) for i in images])
    return Encoded(*http_wire.read_batch(model, images, callback_url), key)


class Core:
    """What one client knows (its server, token, timeouts, retry policy and run ID) and every
    operation of the API, built on it."""

    def __init__(
        self,
        base_url: str,
        token: str | None,
        timeouts: Timeouts,
        retries: Retries,
        run_id: str | None = None,
        rng: random.Random | None = None,
    ) -> None:
        parts = urllib.parse.urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeouts = timeouts
        self.retries = retries
        # None: every call draws its own run ID (its retries share it, other calls do not).
        self.run_id = run_id
        self._rng = rng or random.Random()
        # /info's limits, read once, when first needed.
        self._limits: Limits | None = None

    @classmethod
    def configured(
        cls,
        base_url: str,
        token: str | None,
        timeout: float | Timeouts | None,
        max_retries: int | None,
        retries: Retries | None,
        run_id: str | None,
    ) -> Core:
        """The core of a client built with these arguments (the same for both clients)."""
        policy = retries or Retries()
        if max_retries is not None:
            policy = dataclasses.replace(policy, max_retries=max_retries)
        return cls(base_url, token, Timeouts.of(timeout, Timeouts()), policy, run_id)

    # -- requests and the retry policy ---------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        content_type: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeouts: float | Timeouts | None = None,
        hold: float = 0.0,
        idempotent: bool | None = None,
        stream: bool = False,
    ) -> Request:
        """A request to this client's server; ``hold``: seconds the server may hold it."""
        chosen = Timeouts.of(timeouts, self.timeouts)
        if hold > 0:
            chosen = chosen.holding(hold)
        if stream:
            chosen = Timeouts(chosen.connect, max(chosen.read, STREAM_READ_MIN), chosen.total)
        all_headers = {
            "User-Agent": USER_AGENT,
            "Accept": "text/event-stream" if stream else "application/json",
            # Sent again with every retry, so the tries of one call can be told together.
            "X-Request-ID": uuid.uuid4().hex,
            **(headers or {}),
        }
        if content_type is not None:
            all_headers["Content-Type"] = content_type
        if self.token:
            all_headers["Authorization"] = f"Bearer {self.token}"
        if idempotent is None:
            idempotent = method == "GET" or "Idempotency-Key" in all_headers
        return Request(method, path, all_headers, body, chosen, idempotent, stream)

    def send(self, request: Request, *, retry: bool = True) -> Operation[Response]:
        """The answer to ``request``, sent again as the policy allows; ``ApiError`` for an
        error status, ``Unreachable`` (``TimedOut``) for no answer."""
        attempt = 0
        while True:
            try:
                response: Response = yield request
                if response.status < 400:
                    return response
                raise self.error(response)
            except ImgqClientError as exc:
                delay = self.retry_delay(request, exc, attempt) if retry else None
                if delay is None:
                    raise
                attempt += 1
                log.info(
                    "%s: %s; trying again in %.1f s (retry %d of %d)",
                    request.describe(),
                    _reason(exc),
                    delay,
                    attempt,
                    self.retries.max_retries,
                )
                yield Sleep(delay)

    def retry_delay(self, request: Request, exc: ImgqClientError, attempt: int) -> float | None:
        """Seconds to wait before sending ``request`` again after ``exc``; None: do not."""
        if attempt >= self.retries.max_retries:
            return None
        if isinstance(exc, ApiError):
            if exc.status in REFUSED_FOR_NOW or (
                exc.status in PROXY_GAVE_UP and request.idempotent
            ):
                after = http_wire.retry_after(exc.headers)
                if after is not None:
                    return self.retries.after_retry_after(after, self._rng)
                return self.retries.backoff(attempt, self._rng)
            return None
        if isinstance(exc, Unreachable) and (request.idempotent or not exc.sent):
            return self.retries.backoff(attempt, self._rng)
        return None

    def error(self, response: Response) -> ApiError:
        return http_wire.api_error(
            response.status, response.reason, response.headers, response.body, response.request_id
        )

    def json(self, response: Response) -> dict[str, Any]:
        try:
            return http_wire.json_object(http_wire.json_loads(response.body))
        except ValueError as exc:  # whatever answered is not an imgq gateway
            raise Unreachable(self.base_url, f"the answer is not a JSON object ({exc})") from None

    def new_run_id(self, run_id: str | None) -> str:
        return run_id or self.run_id or http_wire.new_run_id()

    # -- the API ---------------------------------------------------------------------------

    def info(self, timeouts: float | Timeouts | None = None) -> Operation[Info]:
        response = yield from self.send(self.request("GET", "/info", timeouts=timeouts))
        info = Info.from_dict(self.json(response))
        self._limits = info.limits
        return info

    def limits(self) -> Operation[Limits]:
        """The server's limits: /info's, read once per client."""
        if self._limits is None:
            yield from self.info()
        assert self._limits is not None
        return self._limits

    def ready(self, timeouts: float | Timeouts | None = None) -> Operation[tuple[bool, str]]:
        """Whether the gateway says it is ready, and why not when it is not (asked once: a
        503 is the answer here, not a reason to try again)."""
        request = self.request("GET", "/readyz", timeouts=timeouts)
        try:
            yield from self.send(request, retry=False)
        except ApiError as exc:
            if exc.status == 503:
                return False, exc.detail
            raise
        return True, "ready"

    def submit(
        self,
        model: str,
        image: ImageInput,
        *,
        fresh: bool = False,
        run_id: str | None = None,
        timeouts: float | Timeouts | None = None,
        callback_url: str | None = None,
    ) -> Operation[Job]:
        run = self.new_run_id(run_id)
        encoded: Encoded = yield Call(lambda: encode_job(model, image, run, callback_url))
        return (yield from self.post_job(encoded, fresh=fresh, timeouts=timeouts))

    def post_job(
        self, encoded: Encoded, *, fresh: bool, timeouts: float | Timeouts | None = None
    ) -> Operation[Job]:
        request = self._post("/classifications", encoded, fresh, timeouts)
        return Job.from_dict(self.json((yield from self.send(request))))

    def submit_batch(
        self,
        model: str,
        images: Sequence[ImageInput],
        *,
        fresh: bool = False,
        run_id: str | None = None,
        timeouts: float | Timeouts | None = None,
        callback_url: str | None = None,
    ) -> Operation[Batch]:
        run = self.new_run_id(run_id)

        def encode() -> Encoded:
            uploads = [http_wire.name_or_upload(i) for i in images]
            return encode_batch(model, uploads, run, callback_url)

        encoded: Encoded = yield Call(encode)
        return (yield from self.post_batch(encoded, fresh=fresh, timeouts=timeouts))

    def post_batch(
        self, encoded: Encoded, *, fresh: bool, timeouts: float | Timeouts | None = None
    ) -> Operation[Batch]:
        request = self._post("/batches", encoded, fresh, timeouts)
        return Batch.from_dict(self.json((yield from self.send(request))))

    def _post(
        self, path: str, encoded: Encoded, fresh: bool, timeouts: float | Timeouts | None
    ) -> Request:
        headers = {"Idempotency-Key": encoded.key, **http_wire.fresh_headers(fresh)}
        return self.request(
            "POST",
            path,
            body=encoded.body,
            content_type=encoded.content_type,
            headers=headers,
            timeouts=timeouts,
        )

    def get(
        self,
        job_id: str,
        *,
        wait: float = 0.0,
        since: str | None = None,
        timeouts: float | Timeouts | None = None,
    ) -> Operation[Job]:
        """The job; with ``wait``, held by the server until it is final (or, with ``since``,
        no longer in that status), at most the server's longest long-poll."""
        if wait > 0:
            wait = min(wait, (yield from self.limits()).max_wait)
        path = http_wire.job_path(job_id, wait=wait, since=since)
        request = self.request("GET", path, timeouts=timeouts, hold=wait)
        return Job.from_dict(self.json((yield from self.send(request))))

    def wait(
        self, job_id: str, timeout: float, *, timeouts: float | Timeouts | None = None
    ) -> Operation[Job]:
        """The job once final, or as it stands after ``timeout`` seconds; emits it as first
        seen and at each change."""
        deadline = time.monotonic() + timeout
        job = yield from self.get(job_id, timeouts=timeouts)
        yield Emit(job)
        return (yield from self.follow(job, deadline, changes=True, timeouts=timeouts))

    def follow(
        self,
        job: Job,
        deadline: float,
        *,
        changes: bool,
        timeouts: float | Timeouts | None = None,
    ) -> Operation[Job]:
        """Long-polls from ``job`` as known until it is final or the monotonic ``deadline``
        passes; with ``changes``, emits each new status as the server reports it."""
        while not job.is_final and (left := deadline - time.monotonic()) > 0:
            latest = yield from self.get(
                job.job_id, wait=max(left, 0.1), since=job.status, timeouts=timeouts
            )
            if changes and latest.status != job.status:
                yield Emit(latest)
            job = latest
        return job

    def get_batch(
        self, batch_id: str, *, wait: float = 0.0, timeouts: float | Timeouts | None = None
    ) -> Operation[Batch]:
        if wait > 0:
            wait = min(wait, (yield from self.limits()).max_wait)
        path = http_wire.batch_path(batch_id, wait=wait)
        request = self.request("GET", path, timeouts=timeouts, hold=wait)
        return Batch.from_dict(self.json((yield from self.send(request))))

    def wait_batch(
        self,
        batch_id: str,
        timeout: float,
        *,
        interval: float | None = None,
        timeouts: float | Timeouts | None = None,
    ) -> Operation[Batch]:
        """The batch once every job is final, or as it stands after ``timeout`` seconds; emits
        it as first seen and after each long-poll, which lasts at most ``interval`` seconds
        (None: the server's longest)."""
        deadline = time.monotonic() + timeout
        batch = yield from self.get_batch(batch_id, timeouts=timeouts)
        yield Emit(batch)
        while not batch.done and (left := deadline - time.monotonic()) > 0:
            hold = max(min(left, interval or left), 0.1)
            batch = yield from self.get_batch(batch_id, wait=hold, timeouts=timeouts)
            yield Emit(batch)
        return batch

    def cancel(
        self, job_id: str, timeouts: float | Timeouts | None = None
    ) -> Operation[Job | None]:
        request = self.request("DELETE", http_wire.job_path(job_id), timeouts=timeouts)
        response = yield from self.send(request)
        return Job.from_dict(self.json(response)) if response.body else None

    def events(self, job_id: str, timeouts: float | Timeouts | None = None) -> Operation[None]:
        """Emits the job now, then at each change of status, until it is final.

        A stream that ends before that (the server's stream lifetime, a gateway restarting)
        is opened again with ``Last-Event-ID``; a status already emitted is not emitted
        again.  Failing to connect counts against the retry policy; a stream that delivered
        an event resets the count."""
        path = http_wire.events_path(job_id)
        last_id: str | None = None
        shown: str | None = None
        failures = 0
        while True:
            headers = {"Last-Event-ID": last_id} if last_id is not None else {}
            request = self.request("GET", path, headers=headers, timeouts=timeouts, stream=True)
            parser = http_wire.EventParser()
            delivered = False
            try:
                response: Response = yield request
                if response.status == 204:
                    return  # the server has nothing after the final event we already have
                if response.status >= 400:
                    raise self.error(response)
                while line := (yield ReadLine()):
                    data = parser.feed(line.decode("utf-8"))
                    if data is None:
                        continue
                    job = Job.from_dict(data)
                    delivered = True
                    last_id = parser.last_id or job.status
                    if job.status != shown:
                        shown = job.status
                        yield Emit(job)
                    if job.is_final:
                        return
                if not delivered:
                    raise Unreachable(self.base_url, "the event stream ended without an event")
                failures = 0
                log.info("%s: the stream ended before the job was final; resuming", path)
            except ImgqClientError as exc:
                if delivered:
                    failures = 0
                delay = self.retry_delay(request, exc, failures)
                if delay is None:
                    raise
                failures += 1
                log.info("%s: %s; resuming in %.1f s", path, _reason(exc), delay)
                yield Sleep(delay)


def _reason(exc: ImgqClientError) -> str:
    if isinstance(exc, ApiError):
        return f"{exc.status} {exc.code}"
    if isinstance(exc, Unreachable):
        return exc.reason
    return str(exc)


def run_to_end(op: Operation[Any], perform: Callable[[Any], Any]) -> Any:
    """Run an operation with a step performer (tests: a scripted transport)."""
    reply: Any = None
    error: BaseException | None = None
    while True:
        try:
            step = op.throw(error) if error is not None else op.send(reply)
        except StopIteration as done:
            return done.value
        reply, error = None, None
        try:
            reply = perform(step)
        except ImgqClientError as exc:
            error = exc
