"""Publishing jobs straight to imgq's broker, with direct replies: the one AMQP producer.

``Producer`` holds one connection, one confirming channel and one exclusive reply queue, and
matches replies to jobs with a dict of futures keyed by correlation ID, as
``aio_pika.patterns.RPC`` does.  ``examples/amqp_producer.py`` and the benchmark use it;
docs/amqp.md describes the wire format for producers written in other languages.

It lives with the services' wire code (``shared.wire``, ``shared.messages``), which it is
built on, and is installed with them: the client distribution (``imgq``) speaks HTTP only
and imports nothing of ``shared``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from types import TracebackType

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
)
from aio_pika.exceptions import ChannelClosed, DeliveryError, PublishError

from shared.errors import ImgqError, MessageError, QueueFull
from shared.messages import ClassifyRequest, JobEvent, new_job_id
from shared.topology import REPLIES_EXCHANGE, REQUESTS_EXCHANGE
from shared.wire import OCTET_STREAM, request_message

log = logging.getLogger(__name__)


class ProducerError(ImgqError):
    """The broker would not take a job (no imgq topology, connection lost).  A full work queue
    is ``shared.errors.QueueFull``, as on the gateway."""

    code = "producer_error"


@dataclass(frozen=True, slots=True)
class Reply:
    """A direct reply: the final event, and the AMQP properties it came with."""

    event: JobEvent
    correlation_id: str
    message_id: str | None
    body: bytes


class Producer:
    """One connection, one confirming channel, one reply queue; many jobs.

    ``async with Producer(url) as producer``, then ``job_id = await producer.submit(...)``
    (returns once the broker has confirmed the job) and ``await producer.reply(job_id)``.
    """

    def __init__(self, broker_url: str) -> None:
        self.broker_url = broker_url
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._requests: AbstractExchange | None = None
        self._replies: AbstractQueue | None = None
        # Futures keyed by correlation ID (= job ID), resolved by the reply consumer.
        self._pending: dict[str, asyncio.Future[Reply]] = {}

    async def __aenter__(self) -> Producer:
        self._connection = await aio_pika.connect(
            self.broker_url, client_properties={"connection_name": "imgq example producer"}
        )
        try:
            # Confirms: publish() returns once the broker has the job.  on_return_raises: a job
            # that no queue would take (no imgq service ever ran here) fails instead of vanishing.
            self._channel = await self._connection.channel(
                publisher_confirms=True, on_return_raises=True
            )
            self._channel.close_callbacks.add(self._on_channel_closed)
            try:
                # Passive: the services own the topology; we only check that it is there.
                self._requests = await self._channel.get_exchange(REQUESTS_EXCHANGE)
            except ChannelClosed:
                raise ProducerError(
                    f"exchange {REQUESTS_EXCHANGE!r} does not exist on this broker: "
                    "start an imgq gateway or classifier replica first"
                ) from None
            # Exclusive, server-named, deleted with our connection.
            self._replies = await self._channel.declare_queue(exclusive=True, auto_delete=True)
            # Bound under its own name, so that a replica that may not publish to the default
            # exchange (a least-privilege deployment) can still reach it (docs/amqp.md).
            try:
                await self._replies.bind(REPLIES_EXCHANGE, routing_key=self._replies.name)
            except ChannelClosed:
                raise ProducerError(
                    f"exchange {REPLIES_EXCHANGE!r} does not exist on this broker: "
                    "its imgq services predate direct replies through it"
                ) from None
            await self._replies.consume(self._on_reply, no_ack=True, exclusive=True)
        except BaseException:
            await self._connection.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for future in self._pending.values():
            future.cancel()
        if self._connection is not None:
            await self._connection.close()

    async def submit(
        self, model: str, image_name: str, image: bytes, content_type: str = OCTET_STREAM
    ) -> str:
        """Publish one job and return its ID once the broker has confirmed it."""
        assert self._requests is not None, "use `async with Producer(...)`"
        assert self._replies is not None
        request = ClassifyRequest(
            job_id=new_job_id(),
            model=model,
            image_name=image_name,
            image=image,
            queued_at=time.time(),
        )
        # Registered before publishing: a fast replica's reply can beat the confirm back.
        self._pending[request.job_id] = asyncio.get_running_loop().create_future()
        # Schema version 2: the image bytes are the body; model, name and time are headers.
        out = request_message(
            request,
            content_type=content_type,
            reply_to=self._replies.name,
            correlation_id=request.job_id,
        )
        try:
            await self._requests.publish(out.message, out.routing_key, mandatory=True)
        except PublishError:
            self._pending.pop(request.job_id).cancel()
            raise ProducerError(
                f"no queue is bound to {REQUESTS_EXCHANGE!r}: start an imgq replica first"
            ) from None
        except DeliveryError:
            self._pending.pop(request.job_id).cancel()
            raise QueueFull("the broker refused the job: the work queue is full") from None
        return request.job_id

    async def reply(self, job_id: str) -> Reply:
        """The final event for ``job_id``, as the replica sent it to our reply queue (bound the
        wait with ``asyncio.timeout``)."""
        future = self._pending[job_id]
        try:
            return await asyncio.shield(future)
        finally:
            if future.done():
                self._pending.pop(job_id, None)

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        future = self._pending.get(message.correlation_id or "")
        if future is None or future.done():
            log.warning("reply for an unknown job (correlation_id=%r)", message.correlation_id)
            return
        try:
            event = JobEvent.from_json(message.body)
        except MessageError as exc:
            future.set_exception(exc)
            return
        future.set_result(
            Reply(event, message.correlation_id or "", message.message_id, message.body)
        )

    def _on_channel_closed(self, _channel: object, exc: BaseException | None) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ProducerError(f"connection to the broker lost: {exc!r}"))
