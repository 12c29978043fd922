"""Broker topology: every exchange, queue, routing key and argument, declared in one place.

Both services declare the whole topology at start-up (declaration is idempotent),
so either may start first.  Queue arguments are part of the contract: RabbitMQ
refuses a redeclaration whose arguments differ (PRECONDITION_FAILED), so they
must never be computed from a service's own settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue

# Producers (the gateway, or any program) publish requests here.
REQUESTS_EXCHANGE: Final = "imgq.requests"
REQUEST_ROUTING_KEY: Final = "classify"
# The FIFO work queue every classifier replica competes on.
REQUESTS_QUEUE: Final = "imgq.requests"
# Requests that cannot be processed (not JSON, unknown model, delivered too often).
DEAD_LETTER_EXCHANGE: Final = "imgq.dead-letter"
DEAD_LETTER_QUEUE: Final = "imgq.requests.dead"
# Job events (started, succeeded, failed) and replica heartbeats, topic-routed.
EVENTS_EXCHANGE: Final = "imgq.events"
HEARTBEAT_ROUTING_KEY: Final = "replica.heartbeat"
JOB_EVENTS_PATTERN: Final = "job.*"

# A job whose delivery kills replicas again and again stops being redelivered after this
# many attempts and is dead-lettered instead of taking the whole fleet down.
DELIVERY_LIMIT: Final = 5
# Bounded queue: past this, the broker nacks new publishes and the gateway answers 503,
# rather than letting a backlog grow until the broker's memory alarm stops everything.
MAX_QUEUED_JOBS: Final = 10_000

REQUESTS_QUEUE_ARGUMENTS: Final[dict[str, aio_pika.abc.FieldValue]] = {
    # Quorum: replicated, durable, FIFO, and it counts deliveries (x-delivery-limit).
    "x-queue-type": "quorum",
    "x-delivery-limit": DELIVERY_LIMIT,
    "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
    # At-least-once dead-lettering needs reject-publish overflow; both are what we want anyway.
    "x-dead-letter-strategy": "at-least-once",
    "x-overflow": "reject-publish",
    "x-max-length": MAX_QUEUED_JOBS,
}


def job_routing_key(status: str) -> str:
    return f"job.{status}"


@dataclass(frozen=True, slots=True)
class Topology:
    requests: AbstractExchange
    events: AbstractExchange
    requests_queue: AbstractQueue


async def declare_topology(channel: AbstractChannel) -> Topology:
    requests = await channel.declare_exchange(
        REQUESTS_EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True
    )
    events = await channel.declare_exchange(
        EVENTS_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
    )
    dead = await channel.declare_exchange(
        DEAD_LETTER_EXCHANGE, aio_pika.ExchangeType.FANOUT, durable=True
    )
    dead_queue = await channel.declare_queue(
        DEAD_LETTER_QUEUE, durable=True, arguments={"x-queue-type": "quorum"}
    )
    await dead_queue.bind(dead)
    queue = await channel.declare_queue(
        REQUESTS_QUEUE, durable=True, arguments=REQUESTS_QUEUE_ARGUMENTS
    )
    await queue.bind(requests, REQUEST_ROUTING_KEY)
    return Topology(requests=requests, events=events, requests_queue=queue)
