"""gateway/bodies.py: request bodies in memory, bounded per client and for the gateway.

A real gateway (on the session's broker and replicas) flooded by one client with 50 batch
uploads of 64 MiB at once, while another client's jobs go through: its memory is measured,
and bounded (the budget on its own: tests/unit/test_bodies.py)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest

from compose.stack import wait_http_ok
from gateway.clients import ClientLimits
from imgq.http_wire import Upload, encode_multipart
from tests import api
from tests.conftest import Service

MIB = 1024 * 1024
MODEL = "efficientnet_lite0"


def _vm(pid: int, field: str) -> int:
    """A process's VmRSS or VmHWM (its peak resident memory), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for process {pid}")


async def _upload(url: str, head: bytes, body: bytes, chunked: bool) -> int:
    """POST ``body`` (declared, or chunked) on a connection of its own; the status, as soon as
    the gateway answers: the rest of the body is not sent after that."""
    where = urlsplit(url)
    reader, writer = await asyncio.open_connection(where.hostname, where.port)
    answer = asyncio.ensure_future(reader.readline())
    try:
        writer.write(head)
        for start in range(0, len(body), MIB):
            if answer.done():
                break
            chunk = body[start : start + MIB]
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
            await writer.drain()
        else:
            if chunked:
                writer.write(b"0\r\n\r\n")
                await writer.drain()
    except ConnectionError:
        pass  # the gateway answered and closed: its answer is read below
    try:
        status_line = await asyncio.wait_for(answer, 120)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return int(status_line.split()[1])


@pytest.mark.timeout(600)
def test_fifty_huge_uploads_from_one_client_leave_the_gateway_bounded(
    service: Service, figure: Callable[[str], None]
) -> None:
    gateway, url = service.stack.start_gateway(env={"IMGQ_API_TOKENS": "flood,polite"})
    wait_http_ok(f"{url}/readyz", 60, gateway)
    budget = ClientLimits().body_bytes
    # Seven 9 MiB files (not images: each request that is read in full ends in a 415) in one
    # batch body of just under IMGQ_BATCH_MAX_BYTES.
    content_type, body = encode_multipart(
        {"model": MODEL}, [Upload("file", f"{i}.bin", bytes([i]) * (9 * MIB)) for i in range(7)]
    )
    assert 60 * MIB < len(body) <= 64 * MIB

    def head(chunked: bool) -> bytes:
        framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {len(body)}"
        return (
            f"POST /batches HTTP/1.1\r\nHost: imgq\r\nAuthorization: Bearer flood\r\n"
            f"Content-Type: {content_type}\r\n{framing}\r\nConnection: close\r\n\r\n"
        ).encode()

    polite = {"Authorization": "Bearer polite", "Cache-Control": "no-cache"}
    assert (
        api.post_json(url, "/classifications", {"model": MODEL, "image": "cat.jpg"}, polite).status
        == 202
    )
    before = _vm(gateway.pid, "VmHWM")

    async def flood() -> tuple[list[int], list[str]]:
        uploads = [
            asyncio.ensure_future(_upload(url, head(i % 2 == 1), body, chunked=i % 2 == 1))
            for i in range(50)
        ]
        # Meanwhile the other client's jobs: each accepted, and each classified.
        async with aiohttp.ClientSession(headers=polite) as http:
            jobs = []
            for image in ("cat.jpg", "coffee.jpg", "rocket.jpg", "camera.jpg", "astronaut.jpg"):
                async with http.post(
                    f"{url}/classifications", json={"model": MODEL, "image": image}
                ) as reply:
                    assert reply.status == 202, await reply.text()
                    jobs.append((await reply.json())["job_id"])
            statuses = []
            for job_id in jobs:
                async with http.get(f"{url}/classifications/{job_id}?wait=30") as reply:
                    statuses.append((await reply.json())["status"])
        return await asyncio.gather(*uploads), statuses

    statuses, polite_jobs = asyncio.run(flood())
    peak = _vm(gateway.pid, "VmHWM")
    assert polite_jobs == ["succeeded"] * 5, polite_jobs
    # Every upload got an answer: read and refused for its content (415), or refused for the
    # client's share of body bytes (429) before all of it was read.
    assert set(statuses) <= {415, 429}, statuses
    read = statuses.count(415)
    assert read >= 1, statuses
    assert statuses.count(429) >= 40, statuses
    # Each body byte is held once, and once more while a file is copied out of its part: twice
    # the client's budget, and room for the rest of the process, bound what it may grow by.
    assert peak - before < 2 * budget + 64 * MIB, (peak, before)
    # The flood's bytes are all given back: the client is served again.
    again = api.post_json(
        url,
        "/classifications",
        {"model": MODEL, "image": "cat.jpg"},
        {"Authorization": "Bearer flood"},
    )
    assert again.status == 202, again.body
    figure(
        f"one client, 50 concurrent batch uploads of {len(body) / MIB:.0f} MiB (25 declared, 25 "
        f"chunked): {read} read in full, {statuses.count(429)} refused (429); gateway peak RSS "
        f"{peak / 1e6:.0f} MB (before {before / 1e6:.0f} MB, client budget {budget / MIB:.0f} "
        "MiB); the other client's 5 jobs all succeeded"
    )
    gateway.terminate()
