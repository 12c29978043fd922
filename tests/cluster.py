"""A whole deployment per test: a fresh RabbitMQ node, gateways and replicas as processes.

The reliability scenarios kill, restart and overload things, so each gets its own node
rather than sharing the session's.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aio_pika

from compose.broker import BrokerNode
from compose.stack import ManagedProcess, Stack, wait_http_ok, wait_replicas_online
from shared import wire
from shared.messages import JobEvent
from shared.topology import (
    DEAD_LETTER_QUEUE,
    EVENT_LOG,
    EVENTS_EXCHANGE,
    REQUESTS_QUEUE,
    model_queue,
)

# One model keeps replica start-up short; the scenarios are about delivery, not models.
MODEL = "efficientnet_lite0"


@dataclass
class Cluster:
    node: BrokerNode
    stack: Stack
    env: dict[str, str] = field(default_factory=dict)
    gateways: list[tuple[ManagedProcess, str]] = field(default_factory=list)
    replicas: list[ManagedProcess] = field(default_factory=list)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def urls(self) -> list[str]:
        return [url for proc, url in self.gateways if proc.alive()]

    def start_gateway(self, wait: bool = True, **env: str) -> tuple[ManagedProcess, str]:
        proc, url = self.stack.start_gateway(env={"IMGQ_MODELS": MODEL, **self.env, **env})
        self.gateways.append((proc, url))
        if wait:
            wait_http_ok(f"{url}/readyz", 60, proc)
        return proc, url

    def start_replica(self, **env: str) -> ManagedProcess:
        proc = self.stack.start_replica(
            f"replica-{next(self._ids)}",
            env={"IMGQ_MODELS": MODEL, "IMGQ_HEARTBEAT_INTERVAL": "0.5", **self.env, **env},
        )
        self.replicas.append(proc)
        return proc

    def wait_replicas(self, count: int, timeout: float = 120) -> None:
        wait_replicas_online(self.urls[0], count, timeout)

    def live_replicas(self) -> list[ManagedProcess]:
        return [r for r in self.replicas if r.alive()]


# The work queue of MODEL, the one every test here submits to.
WORK_QUEUE = model_queue(MODEL)
# What queue_depths() says once every job is done.
DRAINED = {WORK_QUEUE: 0, REQUESTS_QUEUE: 0, DEAD_LETTER_QUEUE: 0}


async def _queue_depths(url: str) -> dict[str, int]:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        depths = {}
        for name in (WORK_QUEUE, REQUESTS_QUEUE, DEAD_LETTER_QUEUE):
            queue = await channel.declare_queue(name, passive=True)
            depths[name] = queue.declaration_result.message_count or 0
        return depths


def queue_depths(url: str) -> dict[str, int]:
    return asyncio.run(_queue_depths(url))


async def _read_log(url: str) -> list[JobEvent]:
    """Every job event in the log, in order (read until a marker appended here comes back)."""
    marker = uuid.uuid4().hex
    events: list[JobEvent] = []
    done = asyncio.Event()
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=1000)
        queue = await channel.get_queue(EVENT_LOG)

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            key = message.routing_key or ""
            if key.startswith("marker.") and message.body.decode() == marker:
                done.set()
            elif key.startswith("job."):
                read = wire.parse_log_entries(wire.LogDelivery.of(message))
                events.extend(entry for entry, _ in read.entries if isinstance(entry, JobEvent))
            await message.ack()

        await queue.consume(on_message, arguments={"x-stream-offset": "first"})
        exchange = await channel.get_exchange(EVENTS_EXCHANGE)
        await exchange.publish(aio_pika.Message(marker.encode()), f"marker.{marker}")
        await asyncio.wait_for(done.wait(), 60)
    return events


def read_log(url: str) -> list[JobEvent]:
    return asyncio.run(_read_log(url))


def final_events_per_job(events: list[JobEvent]) -> Counter[str]:
    return Counter(e.job_id for e in events if e.status.is_final)


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
