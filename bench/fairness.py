"""Fair to every client, and full speed for a client alone: the per-client shares at work.

On a gateway with its default shares (``gateway/shares.py``) that trusts this machine as a
proxy, so that clients on one address are told apart by the address each names in
``X-Forwarded-For``:

- 16 clients, one job at a time each (the reference, measured just before), then one client
  with 16 requests at a time: a client alone must get the fleet's throughput;
- a polite client, one job at a time, alone and then beside a bulk client that keeps many
  requests going and retries each 429 after its Retry-After: the polite client's latency must
  not grow much.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import aiohttp

from bench.http_load import client_session, wait_final
from bench.load import Done, JobFailed, LoadResult, run_jobs
from gateway.shares import ACTIVE_SECONDS

# The bulk client's requests at a time: far more than its share under contention.
FLOOD_REQUESTS = 32
# How long the bulk client runs alone before the polite client starts: it fills the queue.
FLOOD_HEAD_START = 1.0


def client(index: int) -> str:
    """The address of the ``index``-th of the many clients."""
    return f"10.0.{index // 250}.{index % 250 + 1}"


POLITE = "10.1.0.1"
BULK = "10.2.0.1"


@dataclass
class FloodResult:
    accepted: int = 0
    refused: int = 0  # 429: over its share
    errors: list[str] = field(default_factory=list)


@dataclass
class FairnessResult:
    clients: int
    many: LoadResult  # ``clients`` clients, one job at a time each
    alone: LoadResult  # one client, ``clients`` requests at a time
    polite_alone: LoadResult
    polite_flooded: LoadResult
    flood: FloodResult


async def _submit(
    http: aiohttp.ClientSession, base_url: str, model: str, image: str
) -> tuple[int, str, float]:
    """(status, job ID or problem detail, Retry-After) of one POST."""
    async with http.post(
        f"{base_url}/classifications",
        json={"model": model, "image": image},
        headers={"Cache-Control": "no-cache"},
    ) as response:
        body = await response.json(content_type=None)
        if response.status == 202:
            return 202, body["job_id"], 0.0
        return (
            response.status,
            str(body.get("detail")),
            float(response.headers.get("Retry-After", 1)),
        )


async def _one_job(http: aiohttp.ClientSession, base_url: str, model: str, image: str) -> Done:
    """A job end to end, retrying a 429 or 503 after Retry-After as a client should."""
    started = time.perf_counter()
    for _ in range(100):
        status, answer, retry = await _submit(http, base_url, model, image)
        if status == 202:
            job = await wait_final(http, base_url, answer)
            if job["status"] != "succeeded":
                raise JobFailed(f"{image}: {job['status']} {job.get('error')}")
            return Done(
                time.perf_counter() - started, job["replica"], job["started_at"], job["finished_at"]
            )
        if status not in (429, 503):
            raise JobFailed(f"submit answered {status}: {answer}")
        await asyncio.sleep(retry)
    raise JobFailed(f"submit kept answering 429/503: {answer}")


def _session(concurrency: int, address: str) -> aiohttp.ClientSession:
    http = client_session(concurrency)
    http.headers["X-Forwarded-For"] = address
    return http


async def one_client(
    base_url: str,
    model: str,
    images: Sequence[str],
    address: str,
    *,
    jobs: int,
    concurrency: int,
    max_seconds: float = float("inf"),
) -> LoadResult:
    """``jobs`` jobs from one client (one address), ``concurrency`` at a time."""
    async with _session(concurrency, address) as http:
        return await run_jobs(
            lambda image: _one_job(http, base_url, model, image),
            images,
            jobs=jobs,
            concurrency=concurrency,
            max_seconds=max_seconds,
        )


async def many_clients(
    base_url: str,
    model: str,
    images: Sequence[str],
    *,
    clients: int,
    jobs: int,
    max_seconds: float = float("inf"),
) -> LoadResult:
    """``jobs`` jobs from ``clients`` clients (an address each), each one job at a time."""
    started = time.perf_counter()
    results = await asyncio.gather(
        *(
            one_client(
                base_url,
                model,
                [*images[i:], *images[:i]],
                client(i),
                jobs=jobs // clients,
                concurrency=1,
                max_seconds=max_seconds,
            )
            for i in range(clients)
        )
    )
    merged = LoadResult(elapsed=time.perf_counter() - started)
    for result in results:
        merged.jobs += result.jobs
        merged.failed += result.failed
        merged.per_image += result.per_image
        merged.spans += result.spans
        merged.errors += result.errors[: 10 - len(merged.errors)]
    return merged


async def flood(
    base_url: str, model: str, images: Sequence[str], stop: asyncio.Event
) -> FloodResult:
    """A bulk client: FLOOD_REQUESTS requests at a time until ``stop``, each job long-polled
    to its end, each 429 retried after its Retry-After."""
    result = FloodResult()
    async with _session(FLOOD_REQUESTS, BULK) as http:

        async def requests(offset: int) -> None:
            n = offset
            while not stop.is_set():
                n += FLOOD_REQUESTS
                try:
                    status, answer, retry = await _submit(
                        http, base_url, model, images[n % len(images)]
                    )
                    if status == 202:
                        result.accepted += 1
                        await wait_final(http, base_url, answer)
                        continue
                    result.refused += status == 429
                    if status not in (429, 503) and len(result.errors) < 10:
                        result.errors.append(f"{status}: {answer}")
                    await _sleep_unless(stop, retry)
                except (aiohttp.ClientError, TimeoutError, JobFailed) as exc:
                    if len(result.errors) < 10:
                        result.errors.append(repr(exc))

        await asyncio.gather(*(requests(i) for i in range(FLOOD_REQUESTS)))
    return result


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def polite_beside_a_flood(
    base_url: str, model: str, images: Sequence[str], jobs: int
) -> tuple[LoadResult, FloodResult]:
    """The polite client's ``jobs``, one at a time, while the bulk client floods."""
    stop = asyncio.Event()
    flooding = asyncio.ensure_future(flood(base_url, model, images, stop))
    await asyncio.sleep(FLOOD_HEAD_START)
    try:
        polite = await one_client(base_url, model, images, POLITE, jobs=jobs, concurrency=1)
    finally:
        stop.set()
    return polite, await flooding


async def measure(
    base_url: str,
    model: str,
    images: Sequence[str],
    *,
    clients: int,
    jobs: int,
    polite_jobs: int,
    max_seconds: float,
) -> FairnessResult:
    many = await many_clients(
        base_url, model, images, clients=clients, jobs=jobs, max_seconds=max_seconds
    )
    # Until the many have been quiet this long they still count as submitting, and the one
    # client would get a share of the fleet rather than all of it.
    await asyncio.sleep(ACTIVE_SECONDS + 0.5)
    alone = await one_client(
        base_url, model, images, client(0), jobs=jobs, concurrency=clients, max_seconds=max_seconds
    )
    polite_alone = await one_client(
        base_url, model, images, POLITE, jobs=polite_jobs, concurrency=1
    )
    polite_flooded, flooded = await polite_beside_a_flood(base_url, model, images, polite_jobs)
    return FairnessResult(clients, many, alone, polite_alone, polite_flooded, flooded)
