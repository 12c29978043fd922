"""Jobs published straight to the broker, as ``docs/amqp.md`` describes, with direct replies."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping, Sequence

import aio_pika
from aio_pika.exceptions import ChannelNotFoundEntity

from bench.load import Done, JobFailed, LoadResult, run_jobs
from shared.catalog import CATALOG
from shared.errors import QueueFull
from shared.producer import Producer
from shared.states import JobStatus
from shared.topology import REQUESTS_QUEUE, model_queue

PUBLISH_TIMEOUT = 30.0
RESULT_TIMEOUT = 120.0
# A nacked publish (the work queue at its bound) is retried this often, this late.
MAX_RETRIES = 100
RETRY_DELAY = 0.05


async def _classify(producer: Producer, model: str, name: str, image: bytes) -> Done:
    """One job end to end: seconds from publishing to receiving its final event."""
    submitted = time.time()
    started = time.perf_counter()
    for _ in range(MAX_RETRIES):
        try:
            job_id = await asyncio.wait_for(producer.submit(model, name, image), PUBLISH_TIMEOUT)
            break
        except QueueFull:  # nacked: the work queue is full for now
            await asyncio.sleep(RETRY_DELAY)
    else:
        raise JobFailed("the broker kept refusing the job")
    async with asyncio.timeout(RESULT_TIMEOUT):
        event = (await producer.reply(job_id)).event
    seconds = time.perf_counter() - started
    if event.status is not JobStatus.SUCCEEDED:
        raise JobFailed(f"{name}: {event.status} {event.error}")
    return Done(
        seconds, event.replica or "?", event.started_at or 0.0, event.finished_at or 0.0, submitted
    )


async def run(
    broker_url: str,
    model: str,
    images: Mapping[str, bytes],
    *,
    jobs: int,
    concurrency: int,
    max_seconds: float = float("inf"),
) -> LoadResult:
    names: Sequence[str] = sorted(images)
    async with Producer(broker_url) as producer:

        async def one(name: str) -> Done:
            return await _classify(producer, model, name, images[name])

        return await run_jobs(
            one, names, jobs=jobs, concurrency=concurrency, max_seconds=max_seconds
        )


async def purge_requests(broker_url: str, models: Iterable[str] = tuple(CATALOG)) -> int:
    """Drop every queued job (the gateway-only test leaves thousands) from the shared queue and
    the work queues of ``models``; returns how many."""
    connection = await aio_pika.connect(broker_url)
    purged = 0
    async with connection:
        for name in (REQUESTS_QUEUE, *map(model_queue, models)):
            # A channel each: a queue that does not exist closes the channel that asked.
            channel = await connection.channel()
            try:
                queue = await channel.get_queue(name, ensure=True)
            except ChannelNotFoundEntity:
                continue
            purged += int((await queue.purge()).message_count or 0)
            await channel.close()
    return purged
