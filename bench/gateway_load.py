"""The gateway on its own: how fast it accepts jobs, and how many long-polls it holds.

Run with no replica consuming, so that nothing but the gateway (and the broker behind its
publisher confirms) limits the rates; the jobs simply queue up.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import orjson
from yarl import URL

# Connections opened at once while building up the long-polls: the gateway's listen backlog
# (aiohttp's default, 128) must not overflow, or SYN retries would stall the ramp by seconds.
CONNECT_BURST = 100


def rss_mb(pid: int) -> float:
    """Resident memory of a process (VmRSS), in MB (10^6 bytes)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024 / 1e6
    raise RuntimeError(f"no VmRSS for process {pid}")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@dataclass
class SubmitResult:
    accepted: int = 0
    rejected: int = 0  # 503: the queue at its bound, or no confirm in time
    elapsed: float = 0.0
    job_ids: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    # CPU seconds the load generator itself spent sending and reading (this process).
    client_cpu_s: float = 0.0

    @property
    def rate(self) -> float:
        return self.accepted / self.elapsed if self.elapsed > 0 else 0.0


class _Connection(asyncio.Protocol):
    """One kept-alive HTTP/1.1 connection that sends a request and reads its answer.

    The load generator shares the machine's cores with the gateway and the broker, so it must
    cost as little as it can: each request is the same bytes, written at once, and an answer
    is read by its Content-Length (the gateway always sends one) with no parsing beyond the
    status line.  aiohttp's client spent about as much CPU per request as the gateway's own
    HTTP handling, on the same cores.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._answer: asyncio.Future[tuple[int, bytes]] | None = None
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        self._answered()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(ConnectionError(f"connection lost: {exc!r}"))

    def _answered(self) -> None:
        if self._answer is None or self._answer.done():
            return
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self._buffer[:end]).lower()
        length = 0
        at = head.find(b"\r\ncontent-length:")
        if at >= 0:
            line_end = head.find(b"\r\n", at + 2)
            length = int(head[at + 17 : line_end if line_end >= 0 else None])
        if len(self._buffer) < end + 4 + length:
            return
        status = int(head[9:12])
        body = bytes(self._buffer[end + 4 : end + 4 + length])
        del self._buffer[: end + 4 + length]
        self._answer.set_result((status, body))

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        if self._transport is None:
            raise ConnectionError("the gateway closed the connection")
        self._answer = asyncio.get_running_loop().create_future()
        self._transport.write(raw)
        return await self._answer

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


async def submissions(
    base_url: str,
    model: str,
    image: str,
    *,
    jobs: int,
    concurrency: int,
    max_seconds: float = float("inf"),
) -> SubmitResult:
    """POST ``jobs`` jobs from ``concurrency`` kept-alive connections (none started after
    ``max_seconds``); count the 202s per second."""
    url = URL(base_url)
    host, port = url.host or "127.0.0.1", url.port or 80
    body = orjson.dumps({"model": model, "image": image})
    # no-cache: a real job each time, never a reused result.
    raw = (
        f"POST /classifications HTTP/1.1\r\nHost: {host}:{port}\r\n"
        "Content-Type: application/json\r\nCache-Control: no-cache\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    result = SubmitResult()
    remaining = jobs
    loop = asyncio.get_running_loop()
    cpu_before = time.process_time()
    deadline = time.perf_counter() + max_seconds

    async def client() -> None:
        nonlocal remaining
        connection: _Connection | None = None
        while remaining > 0 and time.perf_counter() < deadline:
            remaining -= 1
            try:
                if connection is None:
                    _, connection = await loop.create_connection(_Connection, host, port)
                async with asyncio.timeout(60):
                    status, answer = await connection.request(raw)
            except (OSError, TimeoutError) as exc:
                result.errors.append(repr(exc))
                if connection is not None:
                    connection.close()
                connection = None
                continue
            if status == 202:
                result.accepted += 1
                result.job_ids.append(orjson.loads(answer)["job_id"])
            elif status == 503:
                result.rejected += 1
            elif len(result.errors) < 10:
                result.errors.append(f"{status}: {answer[:300]!r}")
        if connection is not None:
            connection.close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    result.elapsed = time.perf_counter() - started
    result.client_cpu_s = time.process_time() - cpu_before
    return result


@dataclass
class LongPollResult:
    requested: int
    held: int  # still waiting on the gateway when memory was measured
    answered_early: int
    ramp_seconds: float
    rss_before_mb: float
    rss_held_mb: float
    gateway_fds: int


async def hold_long_polls(
    base_url: str, job_ids: Sequence[str], *, count: int, gateway_pid: int, settle: float = 2.0
) -> LongPollResult:
    """Open ``count`` concurrent ``?wait=30`` polls on queued jobs, measure the gateway's RSS
    while it holds them all, then hang up (the gateway drops them as the clients go)."""
    if not job_ids:
        raise ValueError("long-polls need queued jobs to wait on")
    sent = 0
    all_sent = asyncio.Event()
    burst = asyncio.Semaphore(CONNECT_BURST)

    async def on_headers_sent(
        session: aiohttp.ClientSession, context: SimpleNamespace, params: object
    ) -> None:
        nonlocal sent
        sent += 1
        burst.release()
        if sent >= count:
            all_sent.set()

    trace = aiohttp.TraceConfig()
    trace.on_request_headers_sent.append(on_headers_sent)
    answered: list[int] = []
    rss_before = rss_mb(gateway_pid)
    connector = aiohttp.TCPConnector(limit=0)  # one connection per poll, as many as asked
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=90), trace_configs=[trace]
    ) as http:

        async def poll(job_id: str) -> None:
            try:
                async with http.get(f"{base_url}/classifications/{job_id}?wait=30") as response:
                    await response.read()
                    answered.append(response.status)
            except aiohttp.ClientError:
                burst.release()
                answered.append(0)

        started = time.perf_counter()
        tasks = []
        for i in range(count):
            await burst.acquire()
            tasks.append(asyncio.create_task(poll(job_ids[i % len(job_ids)])))
        await asyncio.wait_for(all_sent.wait(), 120)
        ramp = time.perf_counter() - started
        # Let the gateway read every request and park it on its job.
        await asyncio.sleep(settle)
        rss_held = 0.0
        for _ in range(5):
            rss_held = max(rss_held, rss_mb(gateway_pid))
            await asyncio.sleep(0.2)
        fds = open_fds(gateway_pid)
        early = len(answered)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return LongPollResult(
        requested=count,
        held=count - early,
        answered_early=early,
        ramp_seconds=ramp,
        rss_before_mb=rss_before,
        rss_held_mb=rss_held,
        gateway_fds=fds,
    )
