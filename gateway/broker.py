"""The gateway's side of the broker: the transport, and nothing else.

It connects (``shared.session.SessionLoop``: any live node, a fresh session after any loss),
consumes and publishes.  What a message means lives elsewhere: the event log is applied by
``gateway/log_follower.py``, dead-letter notices by ``gateway/dead_letters.py``, heartbeats by
``gateway/heartbeats.py``.

- Publishes requests with publisher confirms (a 202 means the broker has the job).
- Follows the event log (a stream) from the start of its retention window, so a new or
  restarted gateway rebuilds every result before it reports ready, then follows it live
  (``gateway/log_consumer.py``: aiormq's bare deliveries, acks in bulk).
  A session is ready once it reads back the marker it appended itself; after a lost
  connection the next session resumes the log right after the last entry read: no gap,
  no full replay (aio-pika's robust connection would re-consume from the original offset).
- The session loop runs supervised: if it ever ends, the process ends, with a log line
  saying why, and its supervisor (the launcher, compose, Kubernetes) starts a fresh one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Iterable, Sequence
from functools import partial

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection
from aio_pika.exceptions import AMQPError, ChannelNotFoundEntity, DeliveryError

from gateway.dead_letters import DeadLetters
from gateway.heartbeats import Heartbeats
from gateway.log_consumer import LOG_PREFETCH, LogConsumer
from gateway.log_follower import LogFollower
from gateway.metrics import GatewayMetrics
from gateway.queued_events import QueuedEvents
from gateway.replicas import ReplicaRegistry
from gateway.settings import GatewaySettings
from gateway.webhook_consumer import WEBHOOK_PREFETCH, RetryRefused, WebhookConsumer
from gateway.webhooks import Webhooks
from shared import wire
from shared.connect import broker_user, node_address, node_answers, safe_url, watch_channel
from shared.errors import BrokerUnavailable, QueueFull
from shared.messages import BatchRecord, ClassifyRequest, EventBatch, JobEvent, WebhookDelivery
from shared.session import OnDeath, SessionLoop, Supervised
from shared.topology import (
    DEAD_LETTER_NOTICES,
    EVENT_LOG,
    HEARTBEAT_ROUTING_KEY,
    REQUESTS_QUEUE,
    WEBHOOK_RETRY_EXCHANGE,
    WEBHOOKS_QUEUE,
    Topology,
    declare_event_log,
    declare_model_queue,
    declare_topology,
    declare_webhooks,
    find_topology,
    model_queue,
)

log = logging.getLogger(__name__)


class GatewayBroker:
    def __init__(
        self,
        settings: GatewaySettings,
        follower: LogFollower,
        replicas: ReplicaRegistry,
        metrics: GatewayMetrics,
        on_death: OnDeath,
        webhooks: Webhooks | None = None,
    ) -> None:
        self._settings = settings
        self._follower = follower
        self._notices = DeadLetters(self, metrics, settings.senders.classifiers)
        # Callbacks: None where this gateway delivers none (tests of other parts).
        self._hooks = None if webhooks is None else WebhookConsumer(webhooks, self, metrics)
        # The due queue's consumer, to cancel on close, and where retries go.
        self._hooks_consumer: tuple[aio_pika.abc.AbstractQueue, str] | None = None
        self._retries: aio_pika.abc.AbstractExchange | None = None
        self._heartbeats = Heartbeats(replicas)
        self.gateway_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._sessions = SessionLoop(
            settings.broker_urls, f"imgq-gateway {self.gateway_id}", self._session
        )
        self._tasks = Supervised(on_death)
        self._connection: AbstractConnection | None = None
        self._topology: Topology | None = None
        # Events go out on a confirming channel of their own: aiormq's per-channel bookkeeping
        # of returned messages by message ID then never confuses a job's request with its
        # events (both carry the job ID).
        self._events: aio_pika.abc.AbstractExchange | None = None
        self._queued = QueuedEvents(self.publish_events)
        self._connected = asyncio.Event()
        # Set as user_id on everything we publish (RabbitMQ checks it), so readers know the
        # sender; whoever reads the log checks it against IMGQ_*_USERS (gateway/senders.py).
        self._user: str | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self._tasks.spawn(self._sessions.run(), "broker-session")

    async def close(self) -> None:
        await self._stop_webhooks()
        await self._tasks.close()

    async def _stop_webhooks(self) -> None:
        """Take no more callbacks, and let the attempts in flight end (bounded)."""
        consumer, self._hooks_consumer = self._hooks_consumer, None
        if consumer is None or self._hooks is None:
            return
        queue, tag = consumer
        with contextlib.suppress(Exception):
            await asyncio.wait_for(queue.cancel(tag), self._settings.publish_timeout)
        await self._hooks.drained()

    @property
    def ready(self) -> bool:
        """Connected, consuming, and this session has read the log up to its own marker."""
        return self._connected.is_set() and self._follower.caught_up

    @property
    def replayed(self) -> bool:
        """The cache holds every result in the retention window (from the first replay on)."""
        return self._follower.replayed

    @property
    def user(self) -> str | None:
        """The broker user this gateway publishes as (None until it first connects)."""
        return self._user

    @property
    def node_url(self) -> str | None:
        return self._sessions.url

    async def _session(self, connection: AbstractConnection, url: str, lost: asyncio.Event) -> None:
        """One connection's life: set everything up, then wait until it is lost."""
        self._user = broker_user(url)
        self._connection = connection
        # A closed channel or a consumer the broker cancelled (its queue deleted, say) ends
        # the session too: the next one sets everything up again, on whichever node answers.
        watch = partial(watch_channel, lost)
        log_consumer: LogConsumer | None = None
        try:
            channel = await watch(
                await connection.channel(publisher_confirms=True, on_return_raises=True)
            )
            declare = self._settings.declare_topology
            if declare:
                topology = await declare_topology(channel, self._settings.queue_bounds)
                await declare_event_log(channel, topology.events, self._settings.log_retention)
                # The models we offer have a queue even while no replica serves them, so their
                # jobs wait there instead of failing (replicas declare the queues they serve).
                for model in self._settings.models:
                    await declare_model_queue(
                        channel, topology.router, self._settings.queue_bounds, model
                    )
                await declare_webhooks(channel, topology.events, self._settings.webhooks.retries)
            else:
                # Least privilege: the deployment's setup step declared it; if it has not yet,
                # this raises and the session loop tries again.
                topology = await find_topology(channel)

            # The log on a channel of its own, so its prefetch does not apply elsewhere.
            log_channel = await watch(await connection.channel(publisher_confirms=False))
            await log_channel.set_qos(prefetch_count=LOG_PREFETCH)
            if declare:
                await declare_event_log(log_channel, topology.events, self._settings.log_retention)
            marker = uuid.uuid4().hex
            offset = self._follower.begin(marker, self._user)
            underlay = await log_channel.get_underlay_channel()
            log_consumer = LogConsumer(self._follower, underlay)
            await underlay.basic_consume(
                EVENT_LOG, log_consumer.on_delivery, arguments={"x-stream-offset": offset}
            )
            # The broker cancels a stream consumer when the stream is deleted: a stream declared
            # again in its place numbers its entries from 0, so read the new one from its start.
            underlay.on_consumer_cancel_callbacks.add(self._log_deleted)

            beats = await channel.declare_queue(exclusive=True, auto_delete=True)
            await beats.bind(topology.events, HEARTBEAT_ROUTING_KEY)
            await beats.consume(self._heartbeats.on_message, no_ack=True)

            notices_channel = await watch(await connection.channel(publisher_confirms=True))
            await notices_channel.set_qos(prefetch_count=10)
            notices = await notices_channel.get_queue(DEAD_LETTER_NOTICES)
            await notices.consume(self._notices.on_message)

            events_channel = await watch(await connection.channel(publisher_confirms=True))
            self._events = await events_channel.get_exchange(topology.events.name, ensure=False)

            if self._hooks is not None:
                # Retries go out on this channel too: mandatory, so that a delay queue that
                # does not exist is an error rather than a silent drop.
                hooks_channel = await watch(
                    await connection.channel(publisher_confirms=True, on_return_raises=True)
                )
                await hooks_channel.set_qos(prefetch_count=WEBHOOK_PREFETCH)
                self._retries = await hooks_channel.get_exchange(
                    WEBHOOK_RETRY_EXCHANGE, ensure=False
                )
                due = await hooks_channel.get_queue(WEBHOOKS_QUEUE)
                tag = await due.consume(self._hooks.on_message)
                self._hooks_consumer = (due, tag)

            self._topology = topology
            out = wire.marker_message(marker, user_id=self._user)
            await topology.events.publish(out.message, out.routing_key, mandatory=False)
            self._connected.set()
            self._queued.resend()
            log.info(
                "connected to the broker at %s; following the event log from %s",
                safe_url(url),
                offset,
            )
            await lost.wait()
        finally:
            if log_consumer is not None:
                log_consumer.close()
            self._connected.clear()
            self._topology = None
            self._events = None
            self._retries = None
            self._hooks_consumer = None
            self._connection = None

    def _log_deleted(self, *_: object) -> None:
        log.warning("the event log was deleted; reading its replacement from the start")
        self._follower.log_replaced()

    # -- publishing ------------------------------------------------------------------------

    async def submit(self, request: ClassifyRequest, queued: JobEvent, content_type: str) -> None:
        """Return only once the broker has durably taken the job (publisher confirm).

        Its "queued" event is published only then, in the background (gateway/queued_events.py).
        """
        topology = self._require()
        out = wire.request_message(request, content_type=content_type, user_id=self._user)
        try:
            await topology.requests.publish(
                out.message, out.routing_key, timeout=self._settings.publish_timeout
            )
        except DeliveryError as exc:
            # A nack: the queue is at its bound (x-overflow reject-publish).
            raise QueueFull("the work queue is full; try again shortly") from exc
        except (TimeoutError, ConnectionError, AMQPError, RuntimeError) as exc:
            raise BrokerUnavailable(f"the broker did not confirm the job: {exc!r}") from exc
        self._queued.confirmed(queued)

    async def publish_event(self, event: JobEvent) -> None:
        await self._publish(wire.event_message(event, user_id=self._user))

    async def publish_events(self, events: Sequence[JobEvent]) -> None:
        """Several events as one message (``job.events``): one message for the broker to
        take, and for every gateway to read, however many they are."""
        await self._publish(wire.events_message(EventBatch(tuple(events)), user_id=self._user))

    async def publish_forgotten(self, job_id: str) -> None:
        await self._publish(wire.forgotten_message(job_id, user_id=self._user))

    async def publish_batch(self, record: BatchRecord) -> None:
        await self._publish(wire.batch_message(record, user_id=self._user))

    async def publish_webhook_retry(self, delivery: WebhookDelivery, delay: float) -> None:
        """Publish a failed callback to wait ``delay`` seconds in its delay queue; return once
        the broker confirmed it."""
        retries = self._retries
        if retries is None:
            raise BrokerUnavailable("not connected to the broker")
        out = wire.webhook_retry_message(delivery, delay, user_id=self._user)
        try:
            await retries.publish(
                out.message,
                out.routing_key,
                mandatory=True,
                timeout=self._settings.publish_timeout,
            )
        except DeliveryError as exc:
            # Returned (no such delay queue) or nacked (the queue is at its bound).
            raise RetryRefused(f"{out.routing_key}: {exc!r}") from exc
        except (TimeoutError, ConnectionError, AMQPError, RuntimeError) as exc:
            raise BrokerUnavailable(f"the broker did not confirm the retry: {exc!r}") from exc

    async def _publish(self, out: wire.Outgoing) -> None:
        self._require()
        events = self._events
        if events is None:
            raise BrokerUnavailable("not connected to the broker; try again shortly")
        try:
            await events.publish(
                out.message,
                out.routing_key,
                mandatory=False,
                timeout=self._settings.publish_timeout,
            )
        except (TimeoutError, ConnectionError, AMQPError, RuntimeError) as exc:
            raise BrokerUnavailable(f"the broker did not confirm the event: {exc!r}") from exc

    def _require(self) -> Topology:
        if self._topology is None or not self._connected.is_set():
            raise BrokerUnavailable("not connected to the broker; try again shortly")
        return self._topology

    async def nodes(self) -> list[dict[str, object]]:
        """Each configured broker node: is it answering, and is it the one we are using."""
        urls = self._settings.broker_urls
        answers = await asyncio.gather(*(node_answers(url) for url in urls))
        return [
            {"name": node_address(url), "running": up, "connected": url == self.node_url}
            for url, up in zip(urls, answers, strict=True)
        ]

    def work_queues(self, models: Iterable[str]) -> list[str]:
        """The queues replicas take jobs from, whose depths /status and /metrics report: the
        shared queue of requests the router could not place, and each model's queue."""
        return [REQUESTS_QUEUE, *map(model_queue, models)]

    async def queue_depths(self, names: Sequence[str]) -> dict[str, int | None]:
        """Jobs waiting in each named queue; None where the broker did not say."""
        connection = self._connection
        if connection is None or connection.is_closed:
            return dict.fromkeys(names)
        return await queue_depths(connection, names)


async def queue_depths(
    connection: AbstractConnection, names: Sequence[str]
) -> dict[str, int | None]:
    """Jobs waiting in each named queue (None where the broker did not say), by passive
    declares: one round trip each.  On a channel of their own, opened for the purpose: the
    broker closes a channel whose passive declare names a missing queue, and that must never
    be the one that publishes jobs."""
    depths: dict[str, int | None] = dict.fromkeys(names)
    channel: AbstractChannel | None = None
    try:
        for name in names:
            if channel is None or channel.is_closed:
                channel = await connection.channel(publisher_confirms=False)
            try:
                queue = await channel.declare_queue(name, passive=True)
            except ChannelNotFoundEntity:
                channel = None  # closed by the broker; the next name gets a new one
                continue
            depths[name] = queue.declaration_result.message_count
    except (AMQPError, ConnectionError, RuntimeError):
        pass  # the rest stay unknown: a scrape must not fail on a broker hiccup
    finally:
        if channel is not None and not channel.is_closed:
            with contextlib.suppress(AMQPError, ConnectionError, RuntimeError):
                await channel.close()
    return depths
