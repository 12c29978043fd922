"""Jobs published straight to the broker, as ``docs/amqp.md`` describes, with direct replies."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from types import TracebackType

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)
from aio_pika.exceptions import DeliveryError

from bench.load import Done, JobFailed, LoadResult, run_jobs
from shared.messages import JSON, ClassifyRequest, JobEvent, new_job_id
from shared.states import JobStatus
from shared.topology import REQUEST_ROUTING_KEY, REQUESTS_EXCHANGE, REQUESTS_QUEUE

PUBLISH_TIMEOUT = 30.0
RESULT_TIMEOUT = 120.0
# A nacked publish (the work queue at its bound) is retried this often, this late.
MAX_RETRIES = 100
RETRY_DELAY = 0.05


class Producer:
    """Publishes requests with confirms; the final events come back on an exclusive queue."""

    def __init__(self, broker_url: str) -> None:
        self._url = broker_url
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._replies: AbstractQueue | None = None
        self._pending: dict[str, asyncio.Future[JobEvent]] = {}

    async def __aenter__(self) -> Producer:
        self._connection = await aio_pika.connect_robust(
            self._url, client_properties={"connection_name": "imgq-bench"}
        )
        self._channel = await self._connection.channel(publisher_confirms=True)
        # Passive: the services own the topology; a producer only checks that it exists.
        self._exchange = await self._channel.get_exchange(REQUESTS_EXCHANGE, ensure=True)
        self._replies = await self._channel.declare_queue(exclusive=True, auto_delete=True)
        await self._replies.consume(self._on_reply, no_ack=True)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for future in self._pending.values():
            future.cancel()
        if self._connection is not None:
            await self._connection.close()

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        future = self._pending.get(message.correlation_id or "")
        if future is not None and not future.done():
            future.set_result(JobEvent.from_json(message.body))

    async def _publish(self, request: ClassifyRequest) -> None:
        assert self._exchange is not None
        assert self._replies is not None
        for _ in range(MAX_RETRIES):
            message = aio_pika.Message(
                request.to_json(),
                content_type=JSON,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id=request.job_id,
                correlation_id=request.job_id,
                reply_to=self._replies.name,
                type="classify.request",
            )
            try:
                await self._exchange.publish(
                    message, REQUEST_ROUTING_KEY, mandatory=True, timeout=PUBLISH_TIMEOUT
                )
                return
            except DeliveryError:  # nacked: the work queue is full for now
                await asyncio.sleep(RETRY_DELAY)
        raise JobFailed("the broker kept refusing the job")

    async def classify(self, model: str, name: str, image: bytes) -> Done:
        """One job end to end: seconds from publishing to receiving its final event."""
        request = ClassifyRequest(
            job_id=new_job_id(), model=model, image_name=name, image=image, queued_at=time.time()
        )
        future: asyncio.Future[JobEvent] = asyncio.get_running_loop().create_future()
        self._pending[request.job_id] = future
        started = time.perf_counter()
        try:
            await self._publish(request)
            event = await asyncio.wait_for(future, RESULT_TIMEOUT)
        finally:
            self._pending.pop(request.job_id, None)
        seconds = time.perf_counter() - started
        if event.status is not JobStatus.SUCCEEDED:
            raise JobFailed(f"{name}: {event.status} {event.error}")
        return Done(
            seconds, event.replica or "?", event.started_at or 0.0, event.finished_at or 0.0
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
            return await producer.classify(model, name, images[name])

        return await run_jobs(
            one, names, jobs=jobs, concurrency=concurrency, max_seconds=max_seconds
        )


async def purge_requests(broker_url: str) -> int:
    """Drop every queued job (the gateway-only test leaves thousands); returns how many."""
    connection = await aio_pika.connect(broker_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.get_queue(REQUESTS_QUEUE, ensure=True)
        purged = await queue.purge()
        return int(purged.message_count or 0)
