"""The gateway's side of the broker.

- Publishes requests with publisher confirms (a 202 means the broker has the job).
- Follows the event log (a stream) from the start of its retention window, so a new or
  restarted gateway rebuilds every result before it reports ready, then follows it live.
  It knows it has caught up when it reads back a marker it appended itself.
- After a lost connection it resumes the log from the last offset it saw: no gap, no
  full replay.  That is why this module runs its own reconnect loop instead of aio-pika's
  robust connection, which would re-consume from the original offset.
- Turns dead-lettered requests into visible "failed" jobs.
- Tracks replica heartbeats.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterable, Sequence
from functools import partial
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage
from aio_pika.exceptions import AMQPError, ChannelNotFoundEntity, DeliveryError

from gateway.metrics import GatewayMetrics
from gateway.replicas import ReplicaRegistry
from gateway.settings import GatewaySettings
from gateway.store import JobStore
from shared import tracing, wire
from shared.connect import (
    NodeRing,
    broker_user,
    node_address,
    node_answers,
    safe_url,
    watch_channel,
)
from shared.errors import BrokerUnavailable, MessageError, QueueFull
from shared.logs import job_fields
from shared.messages import ClassifyRequest, JobEvent, JobFailure, JobForgotten, is_job_id
from shared.states import JobStatus
from shared.topology import (
    DEAD_LETTER_NOTICES,
    DELIVERY_LIMIT,
    EVENT_LOG,
    HEARTBEAT_ROUTING_KEY,
    REQUESTS_QUEUE,
    Topology,
    declare_event_log,
    declare_model_queue,
    declare_topology,
    find_topology,
    model_queue,
)

log = logging.getLogger(__name__)

# Stream consumers need a prefetch; large enough that a replay is not throttled by acks.
_LOG_PREFETCH = 2000
_RECONNECT_DELAYS = (0.2, 0.5, 1.0, 2.0)

_DEAD_REASONS = {
    "delivery_limit": f"it was delivered more than {DELIVERY_LIMIT} times without completing "
    "(each attempt crashed or lost its replica)",
    "rejected": "a replica rejected it as unprocessable",
    "expired": "it expired in the queue",
    "maxlen": "the queue overflowed",
}


class GatewayBroker:
    def __init__(
        self,
        settings: GatewaySettings,
        store: JobStore,
        replicas: ReplicaRegistry,
        metrics: GatewayMetrics,
    ) -> None:
        self._settings = settings
        self._store = store
        self._replicas = replicas
        self._metrics = metrics
        self.gateway_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._topology: Topology | None = None
        # Events go out on a confirming channel of their own: a submission's request and its
        # "queued" event are then in flight together, and aiormq's per-channel bookkeeping of
        # returned messages by message ID never confuses the two (both carry the job ID).
        self._events: aio_pika.abc.AbstractExchange | None = None
        # Publishes whose confirms nobody waits for; kept so they are not garbage-collected.
        self._background: set[asyncio.Future[None]] = set()
        self._connected = asyncio.Event()
        # Set once the first replay of the log has reached our own marker.
        self._replayed = asyncio.Event()
        self._marker: str | None = None
        self._last_offset: int | None = None
        self._supervisor: asyncio.Task[None] | None = None
        # Any node will do: after losing one, the next session starts with another.
        self._nodes = NodeRing(settings.broker_urls)
        self.node_url: str | None = None
        # Set as user_id on everything we publish (RabbitMQ checks it), so readers know the
        # sender; whoever reads the log checks it against IMGQ_*_USERS (gateway/senders.py).
        self._user: str | None = None
        self.replay_seconds: float | None = None
        self._started = time.monotonic()

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self._started = time.monotonic()
        self._supervisor = asyncio.create_task(self._supervise(), name="broker-supervisor")

    async def close(self) -> None:
        if self._supervisor is not None:
            self._supervisor.cancel()
            await asyncio.gather(self._supervisor, return_exceptions=True)
        if self._connection is not None and not self._connection.is_closed:
            await self._connection.close()

    @property
    def ready(self) -> bool:
        """Connected, consuming, and the cache holds every result in the retention window."""
        return self._connected.is_set() and self._replayed.is_set()

    @property
    def replayed(self) -> bool:
        return self._replayed.is_set()

    async def _supervise(self) -> None:
        attempt = 0
        while True:
            try:
                await self._session()
                attempt = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure to connect or declare: try again
                log.warning("broker session ended: %r", exc)
            delay = _RECONNECT_DELAYS[min(attempt, len(_RECONNECT_DELAYS) - 1)]
            attempt += 1
            await asyncio.sleep(delay)

    async def _session(self) -> None:
        """One connection's life: set everything up, then wait until it closes."""
        connection, self.node_url = await self._nodes.connect_any(
            connection_name=f"imgq-gateway {self.gateway_id}"
        )
        self._user = broker_user(self.node_url)
        closed = asyncio.Event()
        connection.close_callbacks.add(lambda *_: closed.set())
        self._connection = connection
        # A closed channel or a consumer the broker cancelled (its queue deleted, say) ends
        # the session too: the next one sets everything up again, on whichever node answers.
        watch = partial(watch_channel, closed)
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
            else:
                # Least privilege: the deployment's setup step declared it; if it has not yet,
                # this raises and the supervisor tries again.
                topology = await find_topology(channel)

            # The log on a channel of its own, so its prefetch does not apply elsewhere.
            log_channel = await watch(await connection.channel(publisher_confirms=False))
            await log_channel.set_qos(prefetch_count=_LOG_PREFETCH)
            log_queue = (
                await declare_event_log(log_channel, topology.events, self._settings.log_retention)
                if declare
                else await log_channel.get_queue(EVENT_LOG)
            )
            offset: Any = "first" if self._last_offset is None else self._last_offset + 1
            await log_queue.consume(self._on_log, arguments={"x-stream-offset": offset})
            # The broker cancels a stream consumer when the stream is deleted: a stream declared
            # again in its place numbers its entries from 0, so read the new one from its start.
            (await log_channel.get_underlay_channel()).on_consumer_cancel_callbacks.add(
                self._log_deleted
            )

            beats = await channel.declare_queue(exclusive=True, auto_delete=True)
            await beats.bind(topology.events, HEARTBEAT_ROUTING_KEY)
            await beats.consume(self._on_heartbeat, no_ack=True)

            notices_channel = await watch(await connection.channel(publisher_confirms=True))
            await notices_channel.set_qos(prefetch_count=10)
            notices = await notices_channel.get_queue(DEAD_LETTER_NOTICES)
            await notices.consume(self._on_dead_letter)

            events_channel = await watch(await connection.channel(publisher_confirms=True))
            self._events = await events_channel.get_exchange(topology.events.name, ensure=False)

            self._channel = channel
            self._topology = topology
            await self._append_marker()
            self._connected.set()
            log.info(
                "connected to the broker at %s; following the event log from %s",
                safe_url(self.node_url),
                offset,
            )
            await closed.wait()
        finally:
            self._connected.clear()
            self._channel = None
            self._topology = None
            self._events = None
            if not connection.is_closed:
                await connection.close()

    def _log_deleted(self, *_: object) -> None:
        log.warning("the event log was deleted; reading its replacement from the start")
        self._last_offset = None

    async def _append_marker(self) -> None:
        assert self._topology is not None
        self._marker = uuid.uuid4().hex
        out = wire.marker_message(self._marker, user_id=self._user)
        await self._topology.events.publish(out.message, out.routing_key, mandatory=False)

    # -- publishing ------------------------------------------------------------------------

    async def submit(self, request: ClassifyRequest, queued: JobEvent, content_type: str) -> None:
        """Return only once the broker has durably taken the job (publisher confirm).

        The job's "queued" event is published at the same moment, not after the job's
        confirm: a 202 costs one broker round trip, not two.  Nobody waits for the event's
        own confirm (other gateways would learn of the job from its "started" event anyway),
        and if the job itself is refused, a "forgotten" event withdraws the logged one.
        """
        topology = self._require()
        out = wire.request_message(request, content_type=content_type, user_id=self._user)
        logged = self._in_background(
            self.publish_event(queued), f"queued event of {request.job_id}"
        )
        try:
            await topology.requests.publish(
                out.message, out.routing_key, timeout=self._settings.publish_timeout
            )
        except DeliveryError as exc:
            # A nack: the queue is at its bound (x-overflow reject-publish).
            self._withdraw(request.job_id, logged)
            raise QueueFull("the work queue is full; try again shortly") from exc
        except (TimeoutError, ConnectionError, AMQPError, RuntimeError) as exc:
            self._withdraw(request.job_id, logged)
            raise BrokerUnavailable(f"the broker did not confirm the job: {exc!r}") from exc

    def _withdraw(self, job_id: str, logged: asyncio.Future[None]) -> None:
        async def withdraw() -> None:
            try:
                await logged
            except BrokerUnavailable:
                return  # the queued event never reached the log: nothing to withdraw
            await self.publish_forgotten(job_id)

        self._in_background(withdraw(), f"withdrawal of refused job {job_id}")

    def _in_background(self, publish: Any, what: str) -> asyncio.Future[None]:
        task: asyncio.Future[None] = asyncio.ensure_future(publish)
        self._background.add(task)

        def done(task: asyncio.Future[None]) -> None:
            self._background.discard(task)
            if not task.cancelled() and task.exception() is not None:
                log.warning("%s not confirmed: %r", what, task.exception())

        task.add_done_callback(done)
        return task

    async def publish_event(self, event: JobEvent) -> None:
        await self._publish(wire.event_message(event, user_id=self._user))

    async def publish_forgotten(self, job_id: str) -> None:
        await self._publish(wire.forgotten_message(job_id, user_id=self._user))

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

    # -- consuming -------------------------------------------------------------------------

    async def _on_log(self, message: AbstractIncomingMessage) -> None:
        offset = (message.headers or {}).get("x-stream-offset")
        try:
            entry: wire.LogEntry | None = wire.parse_log_entry(message)
        except MessageError as exc:
            log.warning("ignoring malformed event %s: %s", message.routing_key, exc)
            entry = None
        refusal = None if entry is None else self._settings.senders.refuses(entry, message.user_id)
        if refusal is not None:
            log.warning("ignoring event %s: %s", message.routing_key, refusal)
        elif entry is not None:
            if isinstance(entry, wire.Marker):
                if entry.value == self._marker and not self.replayed:
                    self.replay_seconds = time.monotonic() - self._started
                    log.info(
                        "event log replayed: %d jobs in %.2f s",
                        len(self._store),
                        self.replay_seconds,
                    )
                    self._replayed.set()
            elif isinstance(entry, JobForgotten):
                self._store.forget(entry.job_id)
            else:
                with tracing.applying(entry, wire.trace_headers(message), live=self.replayed):
                    self._store.apply(entry)
        if isinstance(offset, int):
            self._last_offset = (
                offset if self._last_offset is None else max(self._last_offset, offset)
            )
        await message.ack()

    async def _on_heartbeat(self, message: AbstractIncomingMessage) -> None:
        try:
            self._replicas.record(wire.parse_heartbeat(message))
        except MessageError as exc:
            log.warning("ignoring malformed heartbeat: %s", exc)

    async def _on_dead_letter(self, message: AbstractIncomingMessage) -> None:
        """A request was dead-lettered: show its job as failed, with the reason.

        A version 2 request's job is read from its properties and headers: the image, which
        may be anything a producer sent, is never decoded here.
        """
        headers = message.headers or {}
        reason = str(headers.get("x-first-death-reason", "unknown"))
        try:
            info: wire.RequestInfo | None = wire.request_info(message)
        except MessageError:
            info = None
        job_id = info.job_id if info else message.message_id
        if is_job_id(job_id):
            assert job_id is not None
            explanation = _DEAD_REASONS.get(reason, reason)
            event = JobEvent(
                job_id,
                JobStatus.FAILED,
                info.model if info else "unknown",
                info.image_name if info else "unknown",
                queued_at=info.queued_at if info else None,
                idempotency_key=info.idempotency_key if info else None,
                owner=info.owner if info else None,
                batch=info.batch if info else None,
                finished_at=time.time(),
                error=JobFailure("dead_lettered", f"the job was dead-lettered: {explanation}"),
            )
            try:
                await self.publish_event(event)
            except BrokerUnavailable:
                await message.nack(requeue=True)
                return
            log.warning(
                "job %s dead-lettered (%s)", job_id, reason, extra=job_fields(job_id, event.model)
            )
        self._metrics.dead_lettered.inc()
        await message.ack()


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
