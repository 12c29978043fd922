"""Submit images straight to imgq's broker and wait for the replies (no HTTP involved).

    python examples/amqp_producer.py --broker amqp://guest:guest@127.0.0.1:5672/ \\
        --model efficientnet_lite0 images/coffee.jpg images/cat.jpg

Each image becomes one ``ClassifyRequest`` published to the ``imgq.requests`` exchange with
publisher confirms, ``reply_to`` naming an exclusive, server-named queue of our own and
``correlation_id`` = the job ID.  The replica that finishes a job publishes the final
``JobEvent`` there (and, as always, to the ``imgq.events`` exchange), so we match replies to
jobs with a dict of futures keyed by correlation ID, as aio_pika.patterns.RPC does.

See docs/amqp.md for the contract; ``classify`` below is the importable core.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit, urlunsplit

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
)
from aio_pika.exceptions import AMQPError, ChannelClosed, DeliveryError, PublishError

from shared.catalog import DEFAULT_MODEL
from shared.errors import MessageError
from shared.messages import JSON, ClassifyRequest, JobEvent, new_job_id
from shared.topology import REQUEST_ROUTING_KEY, REQUESTS_EXCHANGE

log = logging.getLogger("amqp_producer")

DEFAULT_BROKER = "amqp://guest:guest@127.0.0.1:5672/"


class ProducerError(Exception):
    """The broker would not take a job (no imgq topology, queue full, connection lost)."""


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

    async def submit(self, model: str, image_name: str, image: bytes) -> str:
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
        message = aio_pika.Message(
            request.to_json(),
            content_type=JSON,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=request.job_id,
            correlation_id=request.job_id,
            reply_to=self._replies.name,
            timestamp=request.queued_at,
            type="classify.request",
        )
        try:
            await self._requests.publish(message, REQUEST_ROUTING_KEY, mandatory=True)
        except PublishError:
            self._pending.pop(request.job_id).cancel()
            raise ProducerError(
                f"no queue is bound to {REQUESTS_EXCHANGE!r}: start an imgq replica first"
            ) from None
        except DeliveryError:
            self._pending.pop(request.job_id).cancel()
            raise ProducerError("the broker refused the job: the work queue is full") from None
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


async def classify(
    broker_url: str,
    model: str,
    images: Sequence[tuple[str, bytes]],
    timeout: float = 120.0,  # noqa: ASYNC109 (one deadline for the whole call, as documented)
) -> list[JobEvent]:
    """Classify ``(name, encoded image bytes)`` pairs; the final events, in the same order.

    Raises ``TimeoutError`` if some reply has not come within ``timeout`` seconds (the jobs
    themselves stay queued on the broker and still finish).
    """
    async with Producer(broker_url) as producer:
        job_ids = [await producer.submit(model, name, data) for name, data in images]
        async with asyncio.timeout(timeout):
            replies = [await producer.reply(job_id) for job_id in job_ids]
    return [reply.event for reply in replies]


def _describe(event: JobEvent) -> str:
    if event.result:
        best = event.result[0]
        return f"{event.status.value}: {best.label} ({best.score:.3f})"
    if event.error is not None:
        return f"{event.status.value}: {event.error.code}: {event.error.message}"
    return event.status.value


def _safe(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--broker",
        default=os.environ.get("IMGQ_BROKER_URL", DEFAULT_BROKER),
        help="AMQP URL (env IMGQ_BROKER_URL)",
    )
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for all")
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE_FILE")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    # aiormq logs connection failures itself; the error line below says it once.
    logging.getLogger("aiormq").setLevel(logging.CRITICAL)
    try:
        images = [(path.name, path.read_bytes()) for path in args.images]
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        events = asyncio.run(classify(args.broker, args.model, images, args.timeout))
    except ProducerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except TimeoutError:
        print(f"error: not every reply came within {args.timeout:g} s", file=sys.stderr)
        return 1
    except (AMQPError, OSError) as exc:
        print(f"error: cannot use the broker at {_safe(args.broker)}: {exc}", file=sys.stderr)
        return 2
    for (name, _), event in zip(images, events, strict=True):
        print(f"{event.job_id}  {name}  {_describe(event)}")
    return 0 if all(event.status.value == "succeeded" for event in events) else 1


if __name__ == "__main__":
    sys.exit(main())
