"""``imgq.AsyncClient``: the asyncio client, on aiohttp (``pip install 'imgq[async]'``).

The same operations as ``imgq.Client`` (``imgq.core``, ``imgq.many``), awaited: only the
transport below differs.  Imported only when ``imgq.AsyncClient`` is first used.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from types import TracebackType
from typing import Any, TypeVar

import aiohttp

from imgq.config import Retries, Timeouts
from imgq.core import Core
from imgq.errors import ImgqClientError, TimedOut, Unreachable
from imgq.http_wire import ImageInput
from imgq.many import DEFAULT_IN_FLIGHT, BatchCreated, Item, Plan
from imgq.steps import Call, Emit, Operation, ReadLine, Request, Response, Sleep
from imgq.sync_transport import describe
from imgq.types import Batch, Classification, Info, Job, Model

T = TypeVar("T")
Timeout = float | Timeouts | None


class AsyncClient:
    """The same methods as ``imgq.Client``, awaited (iterators are async iterators).  Use it
    as an async context manager (or call ``close()``) so its connection pool is closed.

    >>> async with AsyncClient("http://127.0.0.1:8080") as client:
    ...     batch = await client.submit_batch("efficientnet_lite0", ["cat.jpg", "coffee.jpg"])
    ...     batch = await client.wait_batch(batch.batch_id)
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
        self._transport = AioTransport(self._core.base_url)

    @property
    def base_url(self) -> str:
        return self._core.base_url

    async def close(self) -> None:
        await self._transport.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- the API (see imgq.Client for what each does) ----------------------------------------

    async def info(self, *, request_timeout: Timeout = None) -> Info:
        return await self._run(self._core.info(request_timeout))

    async def models(self, *, request_timeout: Timeout = None) -> list[Model]:
        return list((await self.info(request_timeout=request_timeout)).models)

    async def ready(self, *, request_timeout: Timeout = None) -> tuple[bool, str]:
        return await self._run(self._core.ready(request_timeout))

    async def submit(
        self,
        model: str,
        image: ImageInput,
        *,
        fresh: bool = False,
        run_id: str | None = None,
        request_timeout: Timeout = None,
        callback_url: str | None = None,
    ) -> Job:
        op = self._core.submit(
            model,
            image,
            fresh=fresh,
            run_id=run_id,
            timeouts=request_timeout,
            callback_url=callback_url,
        )
        return await self._run(op)

    async def submit_batch(
        self,
        model: str,
        images: Sequence[ImageInput],
        *,
        fresh: bool = False,
        run_id: str | None = None,
        request_timeout: Timeout = None,
        callback_url: str | None = None,
    ) -> Batch:
        op = self._core.submit_batch(
            model,
            images,
            fresh=fresh,
            run_id=run_id,
            timeouts=request_timeout,
            callback_url=callback_url,
        )
        return await self._run(op)

    async def get(
        self,
        job_id: str,
        *,
        wait: float = 0.0,
        since: str | None = None,
        request_timeout: Timeout = None,
    ) -> Job:
        op = self._core.get(job_id, wait=wait, since=since, timeouts=request_timeout)
        return await self._run(op)

    async def wait(
        self,
        job_id: str,
        timeout: float = 300.0,  # noqa: ASYNC109 (a deadline over several long-polls)
        *,
        on_change: Callable[[Job], None] | None = None,
        request_timeout: Timeout = None,
    ) -> Job:
        return await self._run(
            self._core.wait(job_id, timeout, timeouts=request_timeout), on_change
        )

    async def get_batch(
        self, batch_id: str, *, wait: float = 0.0, request_timeout: Timeout = None
    ) -> Batch:
        return await self._run(self._core.get_batch(batch_id, wait=wait, timeouts=request_timeout))

    async def wait_batch(
        self,
        batch_id: str,
        timeout: float = 300.0,  # noqa: ASYNC109 (a deadline over several long-polls)
        *,
        on_change: Callable[[Batch], None] | None = None,
        interval: float | None = None,
        request_timeout: Timeout = None,
    ) -> Batch:
        op = self._core.wait_batch(batch_id, timeout, interval=interval, timeouts=request_timeout)
        return await self._run(op, on_change)

    async def events(self, job_id: str, *, request_timeout: Timeout = None) -> AsyncIterator[Job]:
        async for job in self._iterate(self._core.events(job_id, request_timeout), []):
            yield job

    async def cancel(self, job_id: str, *, request_timeout: Timeout = None) -> Job | None:
        return await self._run(self._core.cancel(job_id, request_timeout))

    async def classify_many(
        self,
        images: Iterable[ImageInput],
        model: str,
        *,
        fresh: bool = False,
        run_id: str | None = None,
        max_in_flight: int = DEFAULT_IN_FLIGHT,
        batch_size: int | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 (per batch, as imgq.Client's)
        on_batch: Callable[[Batch], None] | None = None,
        request_timeout: Timeout = None,
    ) -> AsyncIterator[Classification]:
        limits = await self._run(self._core.limits())
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
        async for result in self._classify(plan, plan.chunks(images), on_batch):
            yield result

    async def _classify(
        self,
        plan: Plan,
        chunks: Iterator[list[Item]],
        on_batch: Callable[[Batch], None] | None,
    ) -> AsyncIterator[Classification]:
        out: asyncio.Queue[Any] = asyncio.Queue()
        finished = object()

        async def work(chunk: list[Item]) -> None:
            try:
                async for value in self._iterate(plan.classify(self._core, chunk), []):
                    await out.put(value)
            except Exception as exc:
                await out.put(exc)
            finally:
                await out.put(finished)

        tasks: set[asyncio.Task[None]] = set()
        running = 0
        exhausted = False
        try:
            while True:
                while running < plan.parallel and not exhausted:
                    # The iterable may read a file or a pipe, and sizes come from the disk.
                    chunk = await asyncio.to_thread(next, chunks, None)
                    if chunk is None:
                        exhausted = True
                        break
                    tasks.add(asyncio.create_task(work(chunk)))
                    running += 1
                if running == 0:
                    return
                value = await out.get()
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
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    # -- running operations -------------------------------------------------------------

    async def _run(self, op: Operation[T], on_emit: Callable[[Any], None] | None = None) -> T:
        answer: list[T] = []
        async for value in self._iterate(op, answer):
            if on_emit is not None:
                on_emit(value)
        return answer[0]

    async def _iterate(self, op: Operation[T], answer: list[T]) -> AsyncIterator[Any]:
        """Perform the operation's steps; yield what it emits; its answer goes in ``answer``."""
        stream: AioStream | None = None
        reply: Any = None
        error: BaseException | None = None
        try:
            while True:
                try:
                    step = op.throw(error) if error is not None else op.send(reply)
                except StopIteration as done:
                    answer.append(done.value)
                    return
                reply, error = None, None
                if isinstance(step, Emit):
                    yield step.value
                    continue
                try:
                    if isinstance(step, Request):
                        if step.stream:
                            if stream is not None:
                                stream.close()
                            stream = await self._transport.open(step)
                            reply = stream.response
                        else:
                            reply = await self._transport.send(step)
                    elif isinstance(step, ReadLine):
                        reply = await stream.readline() if stream is not None else b""
                    elif isinstance(step, Sleep):
                        await asyncio.sleep(step.seconds)
                    elif isinstance(step, Call):
                        reply = await asyncio.to_thread(step.fn)
                except ImgqClientError as exc:
                    error = exc
        finally:
            if stream is not None:
                stream.close()
            op.close()


class AioTransport:
    """``Request`` in, ``Response`` out, on one aiohttp session (opened on first use, in the
    running loop).  Failures become ``Unreachable`` or ``TimedOut``."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def send(self, request: Request) -> Response:
        t = request.timeouts
        timeout = aiohttp.ClientTimeout(total=t.total, sock_connect=t.connect, sock_read=t.read)
        try:
            async with self._open().request(
                request.method,
                self.base_url + request.path,
                data=request.body,
                headers=dict(request.headers),
                timeout=timeout,
                allow_redirects=False,
            ) as response:
                body = await response.read()
                return _response(request, response, body)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self._failure(request, exc) from None

    async def open(self, request: Request) -> AioStream:
        t = request.timeouts
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=t.connect, sock_read=t.read)
        try:
            response = await self._open().request(
                request.method,
                self.base_url + request.path,
                headers=dict(request.headers),
                timeout=timeout,
                allow_redirects=False,
            )
            if response.status != 200:
                async with response:
                    body = await response.read()
                return AioStream(self, request, _response(request, response, body), None)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self._failure(request, exc) from None
        return AioStream(self, request, _response(request, response, b""), response)

    def _failure(self, request: Request, exc: BaseException) -> Unreachable:
        t = request.timeouts
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            return TimedOut(self.base_url, "connect", t.connect)
        if isinstance(exc, aiohttp.SocketTimeoutError):
            return TimedOut(self.base_url, "read", t.read)
        if isinstance(exc, TimeoutError):
            return TimedOut(self.base_url, "total", t.total)
        if isinstance(exc, aiohttp.ClientConnectorError):
            return Unreachable(self.base_url, describe(exc.os_error), sent=False)
        if isinstance(exc, aiohttp.ServerDisconnectedError):
            return Unreachable(self.base_url, "the server closed the connection without answering")
        return Unreachable(self.base_url, str(exc) or type(exc).__name__)


class AioStream:
    """An open event stream: the answer's status and headers, then its lines."""

    def __init__(
        self,
        transport: AioTransport,
        request: Request,
        response: Response,
        body: aiohttp.ClientResponse | None,
    ) -> None:
        self.response = response
        self._transport = transport
        self._request = request
        self._body = body

    async def readline(self) -> bytes:
        """The next line, b"" once the stream has ended."""
        if self._body is None:
            return b""
        try:
            return await self._body.content.readline()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self._transport._failure(self._request, exc) from None

    def close(self) -> None:
        if self._body is not None:
            self._body.close()
            self._body = None


def _response(request: Request, response: aiohttp.ClientResponse, body: bytes) -> Response:
    headers: dict[str, str] = {}
    for name, value in response.headers.items():
        key = name.lower()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return Response(
        response.status,
        response.reason or "",
        headers,
        body,
        request.headers.get("X-Request-ID", ""),
    )
