"""The gateway's side of the broker: publish requests with confirms, follow job events."""

from __future__ import annotations

import logging

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)
from aio_pika.exceptions import AMQPError, DeliveryError

from gateway.replicas import ReplicaRegistry
from gateway.store import JobStore
from shared.errors import BrokerUnavailable, MessageError, QueueFull
from shared.messages import JSON, ClassifyRequest, JobEvent, ReplicaHeartbeat
from shared.topology import (
    HEARTBEAT_ROUTING_KEY,
    JOB_EVENTS_PATTERN,
    REQUEST_ROUTING_KEY,
    Topology,
    declare_topology,
)

log = logging.getLogger(__name__)


class GatewayBroker:
    def __init__(
        self, url: str, store: JobStore, replicas: ReplicaRegistry, publish_timeout: float
    ) -> None:
        self._url = url
        self._store = store
        self._replicas = replicas
        self._publish_timeout = publish_timeout
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._topology: Topology | None = None
        self._events_queue: AbstractQueue | None = None

    async def start(self) -> None:
        # Robust: on a lost connection aio-pika reconnects, redeclares the channel, queues and
        # bindings, and resumes the consumer by itself.
        self._connection = await aio_pika.connect_robust(
            self._url, client_properties={"connection_name": "imgq-gateway"}
        )
        self._channel = await self._connection.channel(publisher_confirms=True)
        self._topology = await declare_topology(self._channel)
        # Our own queue of job events: exclusive and auto-deleted, so each gateway sees every
        # event and nothing is left behind when it goes.
        queue = await self._channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(self._topology.events, JOB_EVENTS_PATTERN)
        await queue.bind(self._topology.events, HEARTBEAT_ROUTING_KEY)
        await queue.consume(self._on_event, no_ack=True)
        self._events_queue = queue

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()

    @property
    def ready(self) -> bool:
        return (
            self._connection is not None
            and self._connection.connected.is_set()
            and self._channel is not None
            and not self._channel.is_closed
            and self._events_queue is not None
        )

    async def submit(self, request: ClassifyRequest) -> None:
        """Return only once the broker has durably taken the job (publisher confirm)."""
        if self._topology is None or not self.ready:
            raise BrokerUnavailable("not connected to the broker; try again shortly")
        message = aio_pika.Message(
            request.to_json(),
            content_type=JSON,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=request.job_id,
            type="classify.request",
        )
        try:
            await self._topology.requests.publish(
                message, REQUEST_ROUTING_KEY, mandatory=True, timeout=self._publish_timeout
            )
        except DeliveryError as exc:
            # A nack: the queue is at its bound (x-overflow reject-publish), or unroutable.
            raise QueueFull("the work queue is full; try again shortly") from exc
        except (TimeoutError, ConnectionError, AMQPError, RuntimeError) as exc:
            raise BrokerUnavailable(f"the broker did not confirm the job: {exc!r}") from exc

    async def _on_event(self, message: AbstractIncomingMessage) -> None:
        try:
            if message.routing_key == HEARTBEAT_ROUTING_KEY:
                self._replicas.record(ReplicaHeartbeat.from_json(message.body))
            else:
                self._store.apply(JobEvent.from_json(message.body))
        except MessageError as exc:
            log.warning("ignoring malformed event %s: %s", message.routing_key, exc)
