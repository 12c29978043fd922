"""``imgq.AsyncClient``: the asyncio client, on aiohttp."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from typing import Any

import aiohttp

from imgq import wire
from imgq.errors import ApiError, Unreachable
from imgq.transport import DEFAULT_TIMEOUT, USER_AGENT
from imgq.types import Batch, Job, Model
from imgq.wire import ImageInput

LONG_POLL = 30.0


class AsyncClient:
    """The same methods as ``imgq.Client``, awaited.  Use it as an async context manager (or
    call ``close()``) so its connection pool is closed.

    >>> async with AsyncClient("http://127.0.0.1:8080") as client:
    ...     batch = await client.submit_batch("efficientnet_lite0", ["cat.jpg", "coffee.jpg"])
    ...     batch = await client.wait_batch(batch.batch_id)
    """

    def __init__(
        self, base_url: str, token: str | None = None, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        # Checked as the sync client checks it, so both refuse the same URLs.
        from imgq.transport import Transport

        self.base_url = Transport(base_url, token, timeout).base_url
        self.token = token
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- the API ---------------------------------------------------------------------------

    async def models(self) -> list[Model]:
        info = wire.json_object(await self._json("GET", "/info"))
        return [Model.from_dict(m) for m in info.get("models") or ()]

    async def submit(self, model: str, image: ImageInput, *, fresh: bool = False) -> Job:
        content_type, body = await asyncio.to_thread(wire.submission, model, image)
        data = await self._json("POST", "/classifications", body, content_type, fresh)
        return Job.from_dict(wire.json_object(data))

    async def submit_batch(
        self, model: str, images: Sequence[ImageInput], *, fresh: bool = False
    ) -> Batch:
        # Reading files from disk would block the loop: a thread does it.
        content_type, body = await asyncio.to_thread(wire.batch_submission, model, images)
        data = await self._json("POST", "/batches", body, content_type, fresh)
        return Batch.from_dict(wire.json_object(data))

    async def get(self, job_id: str, *, wait: float = 0.0) -> Job:
        path = wire.job_path(job_id, wait=wait)
        return Job.from_dict(wire.json_object(await self._json("GET", path, extra_time=wait)))

    # The same signature as Client.wait: a deadline over several long-polls, not one call's.
    async def wait(self, job_id: str, timeout: float = 300.0) -> Job:  # noqa: ASYNC109
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        job = await self.get(job_id)
        while not job.is_final and (left := deadline - loop.time()) > 0:
            job = await self.get(job_id, wait=min(LONG_POLL, max(left, 0.1)))
        return job

    async def get_batch(self, batch_id: str, *, wait: float = 0.0) -> Batch:
        path = wire.batch_path(batch_id, wait=wait)
        return Batch.from_dict(wire.json_object(await self._json("GET", path, extra_time=wait)))

    async def wait_batch(self, batch_id: str, timeout: float = 300.0) -> Batch:  # noqa: ASYNC109
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        batch = await self.get_batch(batch_id)
        while not batch.done and (left := deadline - loop.time()) > 0:
            batch = await self.get_batch(batch_id, wait=min(LONG_POLL, max(left, 0.1)))
        return batch

    async def events(self, job_id: str) -> AsyncIterator[Job]:
        """The job now, then at each change of status; ends once it is final."""
        parser = wire.EventParser()
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.timeout)
        try:
            async with self._open().get(
                self.base_url + wire.events_path(job_id),
                headers=self._headers({"Accept": "text/event-stream"}),
                timeout=timeout,
            ) as response:
                await self._check(response)
                async for raw in response.content:
                    data = parser.feed(raw.decode("utf-8"))
                    if data is not None:
                        yield Job.from_dict(data)
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            raise Unreachable(self.base_url, str(exc) or type(exc).__name__) from None

    async def cancel(self, job_id: str) -> Job | None:
        data = await self._json("DELETE", wire.job_path(job_id))
        return None if data is None else Job.from_dict(wire.json_object(data))

    # -- transport -------------------------------------------------------------------------

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    def _headers(self, extra: dict[str, str]) -> dict[str, str]:
        headers = {"User-Agent": USER_AGENT, **extra}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    async def _json(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        content_type: str | None = None,
        fresh: bool = False,
        extra_time: float = 0.0,
    ) -> Any:
        headers = self._headers({"Accept": "application/json", **wire.fresh_headers(fresh)})
        if content_type is not None:
            headers["Content-Type"] = content_type
        try:
            async with self._open().request(
                method,
                self.base_url + path,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.timeout + extra_time),
            ) as response:
                await self._check(response)
                raw = await response.read()
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            raise Unreachable(self.base_url, str(exc) or type(exc).__name__) from None
        try:
            return wire.json_loads(raw) if raw else None
        except ValueError as exc:
            raise Unreachable(self.base_url, f"the answer is not JSON ({exc})") from None

    @staticmethod
    async def _check(response: aiohttp.ClientResponse) -> None:
        if response.status >= 400:
            raw = await response.read()
            error: ApiError = wire.api_error(
                response.status, response.reason or "", response.headers.get("Content-Type"), raw
            )
            raise error
