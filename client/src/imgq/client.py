"""``imgq.Client``: the synchronous client (standard library only).

Each method runs one of the core's operations (``imgq.core``, ``imgq.many``) with blocking
I/O; ``classify_many`` runs several at once on threads.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from types import TracebackType
from typing import Any, TypeVar

from imgq.config import Retries, Timeouts
from imgq.core import Core
from imgq.errors import ImgqClientError
from imgq.http_wire import ImageInput
from imgq.many import DEFAULT_IN_FLIGHT, BatchCreated, Item, Plan
from imgq.steps import Call, Emit, Operation, ReadLine, Request, Sleep
from imgq.sync_transport import SyncStream, SyncTransport
from imgq.types import Batch, Classification, Info, Job, Model

T = TypeVar("T")
Timeout = float | Timeouts | None


class _Stopped(Exception):
    """The caller stopped iterating: a worker thread ends at its next step."""


class Client:
    """Talks to one gateway.  ``image`` arguments: a str names a gallery image on the server,
    a path (``pathlib.Path``) is a local file to upload, bytes are uploaded as they are.

    ``timeout`` (a number, or ``Timeouts`` for connect/read/total) applies to each request,
    ``request_timeout`` to one call's; ``retries`` (or just ``max_retries``) says when a
    request goes again; ``run_id`` makes submissions idempotent across calls (by default each
    call has its own: its retries never make a second job, a new call makes new jobs).

    >>> with Client("http://127.0.0.1:8080") as client:
    ...     job = client.wait(client.submit("efficientnet_lite0", Path("cat.jpg")).job_id)
    >>> job.label.label
    'tabby'
    """

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout: float | Timeouts | None = None,
        max_retries: int | None = None,
        retries: Retries | None = None,
        run_id: str | None = None,
    ) -> None:
        self._core = Core.configured(base_url, token, timeout, max_retries, retries, run_id)
        self._transport = SyncTransport(self._core.base_url)

    @property
    def base_url(self) -> str:
        return self._core.base_url

    def close(self) -> None:
        """Close the kept-alive connections (they are reopened if the client is used again)."""
        self._transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- the API ---------------------------------------------------------------------------

    def info(self, *, request_timeout: Timeout = None) -> Info:
        """Models, gallery images and limits (``GET /info``)."""
        return self._run(self._core.info(request_timeout))

    def models(self, *, request_timeout: Timeout = None) -> list[Model]:
        return list(self.info(request_timeout=request_timeout).models)

    def ready(self, *, request_timeout: Timeout = None) -> tuple[bool, str]:
        """Whether the gateway is ready (``/readyz``), and why not when it is not."""
        return self._run(self._core.ready(request_timeout))

    def submit(
        self,
        model: str,
        image: ImageInput,
        *,
        fresh: bool = False,
        run_id: str | None = None,
        request_timeout: Timeout = None,
        callback_url: str | None = None,
    ) -> Job:
        """One job; ``fresh`` asks for a new run even if the server knows the answer, and
        ``callback_url`` has the server POST the finished job there (``imgq.webhooks`` checks
        what arrives)."""
        op = self._core.submit(
            model,
            image,
            fresh=fresh,
            run_id=run_id,
            timeouts=request_timeout,
            callback_url=callback_url,
        )
        return self._run(op)

    def submit_batch(
        self,
        model: str,
        images: Sequence[ImageInput],
        *,
        fresh: bool = False,
        run_id: str | None = None,
        request_timeout: Timeout = None,
        callback_url: str | None = None,
    ) -> Batch:
        """One job per image, all in one request (all accepted, or none): at most the
        server's ``limits.batch_max_images`` (``classify_many`` takes any number)."""
        op = self._core.submit_batch(
            model,
            images,
            fresh=fresh,
            run_id=run_id,
            timeouts=request_timeout,
            callback_url=callback_url,
        )
        return self._run(op)

    def get(
        self,
        job_id: str,
        *,
        wait: float = 0.0,
        since: str | None = None,
        request_timeout: Timeout = None,
    ) -> Job:
        """The job; with ``wait``, the server holds the answer until the job is final (or,
        with ``since``, has left that status), at most ``wait`` seconds."""
        return self._run(self._core.get(job_id, wait=wait, since=since, timeouts=request_timeout))

    def wait(
        self,
        job_id: str,
        timeout: float = 300.0,
        *,
        on_change: Callable[[Job], None] | None = None,
        request_timeout: Timeout = None,
    ) -> Job:
        """The job once it is final, or as it stands after ``timeout`` seconds.
        ``on_change`` sees it first as it is, then at each change of status."""
        return self._run(self._core.wait(job_id, timeout, timeouts=request_timeout), on_change)

    def get_batch(
        self, batch_id: str, *, wait: float = 0.0, request_timeout: Timeout = None
    ) -> Batch:
        return self._run(self._core.get_batch(batch_id, wait=wait, timeouts=request_timeout))

    def wait_batch(
        self,
        batch_id: str,
        timeout: float = 300.0,
        *,
        on_change: Callable[[Batch], None] | None = None,
        interval: float | None = None,
        request_timeout: Timeout = None,
    ) -> Batch:
        """The batch once every job is final, or as it stands after ``timeout`` seconds.
        ``on_change`` sees it after every long-poll, each at most ``interval`` seconds."""
        op = self._core.wait_batch(batch_id, timeout, interval=interval, timeouts=request_timeout)
        return self._run(op, on_change)

    def events(self, job_id: str, *, request_timeout: Timeout = None) -> Iterator[Job]:
        """The job now, then at each change of status; ends once it is final (resuming the
        stream, with ``Last-Event-ID``, whenever it ends before that)."""
        yield from self._iterate(self._core.events(job_id, request_timeout))

    def cancel(self, job_id: str, *, request_timeout: Timeout = None) -> Job | None:
        """Cancel a queued job (returned, now cancelled), or forget a finished one (None).
        A started job cannot be cancelled: ``ApiError`` with status 409."""
        return self._run(self._core.cancel(job_id, request_timeout))

    def classify_many(
        self,
        images: Iterable[ImageInput],
        model: str,
        *,
        fresh: bool = False,
        run_id: str | None = None,
        max_in_flight: int = DEFAULT_IN_FLIGHT,
        batch_size: int | None = None,
        timeout: float | None = None,
        on_batch: Callable[[Batch], None] | None = None,
        request_timeout: Timeout = None,
    ) -> Iterator[Classification]:
        """Classify any number of images: yields each one's ``Classification`` as its job
        finishes (in that order, ``index`` saying which image it is).

        At most ``max_in_flight`` images are submitted and not yet reported, in batches of
        what the server allows (or ``batch_size``); ``images`` is read only as far as that
        needs.  ``timeout`` bounds how long a batch's jobs are followed after it was
        submitted (None: until final).  ``on_batch`` sees each batch the server accepted.
        Raises if the server stays unreachable longer than the retry policy waits, or
        refuses what every image needs (an unknown model)."""
        limits = self._run(self._core.limits())
        plan = Plan.make(
            model,
            limits,
            run_id=self._core.new_run_id(run_id),
            fresh=fresh,
            max_in_flight=max_in_flight,
            batch_size=batch_size,
            timeout=timeout,
            timeouts=request_timeout,
        )
        yield from self._classify(plan, plan.chunks(images), on_batch)

    def _classify(
        self,
        plan: Plan,
        chunks: Iterator[list[Item]],
        on_batch: Callable[[Batch], None] | None,
    ) -> Iterator[Classification]:
        out: queue.SimpleQueue[Any] = queue.SimpleQueue()
        stop = threading.Event()
        finished = object()

        def work(chunk: list[Item]) -> None:
            try:
                for value in self._iterate(plan.classify(self._core, chunk), stop):
                    out.put(value)
            except BaseException as exc:
                out.put(exc)
            finally:
                out.put(finished)

        running = 0
        exhausted = False
        try:
            while True:
                while running < plan.parallel and not exhausted:
                    chunk = next(chunks, None)
                    if chunk is None:
                        exhausted = True
                        break
                    threading.Thread(target=work, args=(chunk,), daemon=True).start()
                    running += 1
                if running == 0:
                    return
                value = out.get()
                if value is finished:
                    running -= 1
                elif isinstance(value, BaseException):
                    raise value
                elif isinstance(value, BatchCreated):
                    if on_batch is not None:
                        on_batch(value.batch)
                else:
                    yield value
        finally:
            stop.set()

    # -- running operations -------------------------------------------------------------

    def _run(self, op: Operation[T], on_emit: Callable[[Any], None] | None = None) -> T:
        steps = self._iterate(op)
        while True:
            try:
                value = next(steps)
            except StopIteration as done:
                result: T = done.value
                return result
            if on_emit is not None:
                on_emit(value)

    def _iterate(
        self, op: Operation[T], stop: threading.Event | None = None
    ) -> Generator[Any, None, T]:
        """Perform the operation's steps; yield what it emits; return its answer."""
        stream: SyncStream | None = None
        reply: Any = None
        error: BaseException | None = None
        try:
            while True:
                try:
                    step = op.throw(error) if error is not None else op.send(reply)
                except StopIteration as done:
                    result: T = done.value
                    return result
                reply, error = None, None
                if isinstance(step, Emit):
                    yield step.value
                    continue
                if stop is not None and stop.is_set():
                    raise _Stopped
                try:
                    if isinstance(step, Request):
                        if step.stream:
                            if stream is not None:
                                stream.close()
                            stream = self._transport.open(step)
                            reply = stream.response
                        else:
                            reply = self._transport.send(step)
                    elif isinstance(step, ReadLine):
                        reply = stream.readline() if stream is not None else b""
                    elif isinstance(step, Sleep):
                        if stop is None:
                            time.sleep(step.seconds)
                        elif stop.wait(step.seconds):
                            raise _Stopped
                    elif isinstance(step, Call):
                        reply = step.fn()
                except ImgqClientError as exc:
                    error = exc
        finally:
            if stream is not None:
                stream.close()
            op.close()
