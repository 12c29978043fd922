"""How many events of the event log one gateway applies a second: a replay, and live.

Every gateway reads every event of the log (each job's "queued", "started" and final event),
so what one gateway applies a second bounds the jobs a whole deployment can run, however many
gateways it has.  The log is written here, straight to the events exchange, as the services
frame it (``shared/wire.py``), for jobs that look like the service's own (a gallery image,
five labels, an image digest):

- ``under load``: as a busy service writes it, which is where the bound matters: each replica
  message one batch's results and the next batch's "started" (``IMGQ_BATCH_SIZE`` jobs each),
  a gateway's "queued" events as many to a message as there are jobs in a batch;
- ``one a message``: one event a message, as an idle service writes them (and as replicas
  wrote every event before they batched them).

A replay is timed from a fresh gateway's start to its readiness (it is ready once it has read
the whole log), less the same for a gateway started on an empty log; its CPU likewise.  Live,
one gateway, caught up, follows while more is written as fast as the broker takes it: the
gateway's CPU per event says how many it applies on its core a second (on these 2 cores the
broker and the writer take most of the time, so the wall-clock rate is the writer's).
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import aio_pika

from bench.machine import cpu_seconds
from compose.broker import BrokerNode
from compose.stack import ManagedProcess, Stack, wait_http_ok
from shared import wire
from shared.messages import EventBatch, JobEvent, Label, new_job_id
from shared.states import JobStatus
from shared.topology import (
    EVENT_LOG,
    EVENTS_EXCHANGE,
    LogRetention,
    QueueBounds,
    declare_event_log,
    declare_topology,
)

UNDER_LOAD = "under load"
ONE_A_MESSAGE = "one a message"
# Publishes in flight at once while writing the log (with confirms).
WINDOW = 1000
READY_TIMEOUT = 600.0
# The gateway's own settings for the phase: room for every job written, no access log.
GATEWAY_ENV = {"IMGQ_MAX_JOBS": "1000000", "IMGQ_ACCESS_LOG": "false"}


@dataclass(frozen=True, slots=True)
class LogRate:
    """One way of writing the log, replayed and (for ``under load``) followed live."""

    framing: str
    events: int
    messages: int
    replay_seconds: float
    replay_cpu_seconds: float
    # Live: events written while the gateway followed, their messages, how long until the
    # gateway had applied the last, and the gateway's CPU meanwhile.
    live_events: int = 0
    live_messages: int = 0
    live_seconds: float = 0.0
    live_cpu_seconds: float = 0.0

    @property
    def replay_rate(self) -> float:
        return self.events / self.replay_seconds if self.replay_seconds > 0 else 0.0

    @property
    def replay_per_core_second(self) -> float:
        cpu = self.replay_cpu_seconds
        return self.events / cpu if cpu > 0 else 0.0

    @property
    def live_rate(self) -> float:
        return self.live_events / self.live_seconds if self.live_seconds > 0 else 0.0

    @property
    def live_per_core_second(self) -> float:
        cpu = self.live_cpu_seconds
        return self.live_events / cpu if cpu > 0 else 0.0


def job_events(job_id: str, at: float) -> tuple[JobEvent, JobEvent, JobEvent]:
    """One job's three events, as a gateway ("queued") and a replica write them."""
    queued = JobEvent(
        job_id,
        JobStatus.QUEUED,
        "efficientnet_lite0",
        "n01440764_tench.JPEG",
        queued_at=at,
        image_sha256="5c1e" * 16,
        requested_by="guest",
    )
    started = queued.advance(JobStatus.STARTED, started_at=at, replica="replica-1")
    labels = tuple(Label(f"label {i}", 100 + i, 0.5 / (i + 1)) for i in range(5))
    return queued, started, started.advance(JobStatus.SUCCEEDED, finished_at=at, result=labels)


def framed(framing: str, jobs: int, batch: int) -> tuple[list[wire.Outgoing], str]:
    """The log of ``jobs`` jobs, as messages in ``framing``; and the last job's ID."""
    at = time.time()
    ids = [new_job_id() for _ in range(jobs)]
    events = [job_events(job_id, at) for job_id in ids]
    if framing == ONE_A_MESSAGE:
        out = [wire.event_message(e, user_id="guest") for job in events for e in job]
        return out, ids[-1]
    out = []
    groups = [events[i : i + batch] for i in range(0, jobs, batch)]
    previous: Sequence[tuple[JobEvent, JobEvent, JobEvent]] = ()
    for group in groups:
        # The gateways' queued events of the batch, then the replica's message: the last
        # batch's results with this batch's "started".
        out.append(_batch([queued for queued, _, _ in group]))
        out.append(_batch([final for _, _, final in previous] + [s for _, s, _ in group]))
        previous = group
    out.append(_batch([final for _, _, final in previous]))
    return out, ids[-1]


def _batch(events: list[JobEvent]) -> wire.Outgoing:
    return wire.events_message(EventBatch(tuple(events)), user_id="guest")


async def _write(url: str, messages: Sequence[wire.Outgoing]) -> None:
    """Publish every message, confirmed, ``WINDOW`` at a time in flight."""
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(EVENTS_EXCHANGE)
        for start in range(0, len(messages), WINDOW):
            await asyncio.gather(
                *(
                    exchange.publish(out.message, out.routing_key, mandatory=False)
                    for out in messages[start : start + WINDOW]
                )
            )


async def _fresh_log(url: str) -> None:
    """The topology, with an empty event log (a log left by an earlier run is dropped)."""
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        topology = await declare_topology(channel, QueueBounds())
        await channel.queue_delete(EVENT_LOG)
        await declare_event_log(channel, topology.events, LogRetention())


def _replay(stack: Stack) -> tuple[ManagedProcess, str, float, float]:
    """A fresh gateway, until ready: (process, URL, seconds, CPU seconds)."""
    started = time.perf_counter()
    gateway, url = stack.start_gateway(env=GATEWAY_ENV)
    wait_http_ok(f"{url}/readyz", READY_TIMEOUT, gateway)
    return gateway, url, time.perf_counter() - started, cpu_seconds(gateway.pid)


def _await_final(url: str, job_id: str, timeout: float) -> None:
    """Until the gateway shows ``job_id`` final (404 until its first event is applied)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(
                f"{url}/classifications/{job_id}?wait=30", timeout=60
            ) as response:
                if json.load(response)["status"] in ("succeeded", "failed", "cancelled"):
                    return
        except urllib.error.HTTPError as exc:
            if exc.code != 404:
                raise
            time.sleep(0.02)
    raise TimeoutError(f"the gateway did not apply job {job_id} within {timeout:.0f} s")


def _events(messages: Sequence[wire.Outgoing]) -> int:
    return sum(
        len(EventBatch.from_json(out.message.body).events)
        if out.routing_key.endswith(".events")
        else 1
        for out in messages
    )


def measure(
    node: BrokerNode, stack: Stack, *, jobs: int, live_jobs: int, batch: int
) -> Iterator[LogRate]:
    """Replay ``jobs`` jobs' events framed each way (and follow ``live_jobs`` more live, framed
    under load), one fresh log each."""
    for framing in (UNDER_LOAD, ONE_A_MESSAGE):
        asyncio.run(_fresh_log(node.url))
        empty, _, empty_seconds, empty_cpu = _replay(stack)
        empty.terminate()
        messages, _ = framed(framing, jobs, batch)
        asyncio.run(_write(node.url, messages))
        gateway, url, seconds, cpu = _replay(stack)
        rate = LogRate(
            framing,
            _events(messages),
            len(messages),
            max(1e-3, seconds - empty_seconds),
            max(1e-3, cpu - empty_cpu),
        )
        try:
            if framing == UNDER_LOAD and live_jobs:
                rate = _live(node, url, gateway, rate, live_jobs, batch)
        finally:
            gateway.terminate()
        yield rate


def _live(
    node: BrokerNode, url: str, gateway: ManagedProcess, rate: LogRate, jobs: int, batch: int
) -> LogRate:
    messages, last = framed(UNDER_LOAD, jobs, batch)
    cpu_before = cpu_seconds(gateway.pid)
    started = time.perf_counter()
    asyncio.run(_write(node.url, messages))
    _await_final(url, last, READY_TIMEOUT)
    return LogRate(
        rate.framing,
        rate.events,
        rate.messages,
        rate.replay_seconds,
        rate.replay_cpu_seconds,
        live_events=_events(messages),
        live_messages=len(messages),
        live_seconds=time.perf_counter() - started,
        live_cpu_seconds=cpu_seconds(gateway.pid) - cpu_before,
    )
