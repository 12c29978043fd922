"""Jobs through the gateway's HTTP API: submit, then long-poll until the result is visible."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import aiohttp

from bench.load import Done, JobFailed, LoadResult, run_jobs

FINAL = frozenset({"succeeded", "failed", "cancelled"})
# Long-polls per job before giving up on it: the service answers well within one.
MAX_POLLS = 4
# A submission the gateway turns away for a moment (503) is retried this often, this late.
MAX_RETRIES = 100
RETRY_DELAY = 0.05


def client_session(concurrency: int) -> aiohttp.ClientSession:
    # One kept-alive connection per concurrent client: the load a pool of clients puts on a
    # gateway, without a TCP handshake per request.
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120))


async def submit(http: aiohttp.ClientSession, base_url: str, model: str, image: str) -> str:
    """POST one job; its ID once the gateway answers 202 (the broker then holds the job)."""
    # no-cache: classify it again even if the gateway already knows this image's answer.
    headers = {"Cache-Control": "no-cache"}
    for _ in range(MAX_RETRIES):
        async with http.post(
            f"{base_url}/classifications", json={"model": model, "image": image}, headers=headers
        ) as response:
            body = await response.json(content_type=None)
            if response.status == 202:
                job_id: str = body["job_id"]
                return job_id
            if response.status != 503:
                raise JobFailed(f"submit answered {response.status}: {body}")
        await asyncio.sleep(RETRY_DELAY)
    raise JobFailed("submit kept answering 503")


async def wait_final(http: aiohttp.ClientSession, base_url: str, job_id: str) -> dict[str, Any]:
    job: dict[str, Any] = {}
    for _ in range(MAX_POLLS):
        async with http.get(f"{base_url}/classifications/{job_id}?wait=30") as response:
            job = await response.json(content_type=None)
            if response.status != 200:
                raise JobFailed(f"poll answered {response.status}: {job}")
        if job["status"] in FINAL:
            return job
    raise JobFailed(f"job {job_id} still {job.get('status')} after {MAX_POLLS} long-polls")


async def classify(
    http: aiohttp.ClientSession, base_url: str, model: str, image: str
) -> tuple[dict[str, Any], float]:
    """One job end to end: the final job, and the seconds from submit to result."""
    started = time.perf_counter()
    job_id = await submit(http, base_url, model, image)
    job = await wait_final(http, base_url, job_id)
    return job, time.perf_counter() - started


async def run(
    base_url: str,
    model: str,
    images: Sequence[str],
    *,
    jobs: int,
    concurrency: int,
    max_seconds: float = float("inf"),
) -> LoadResult:
    async with client_session(concurrency) as http:

        async def one(image: str) -> Done:
            submitted = time.time()
            job, seconds = await classify(http, base_url, model, image)
            if job["status"] != "succeeded":
                raise JobFailed(f"{image}: {job['status']} {job.get('error')}")
            return Done(seconds, job["replica"], job["started_at"], job["finished_at"], submitted)

        return await run_jobs(
            one, images, jobs=jobs, concurrency=concurrency, max_seconds=max_seconds
        )
