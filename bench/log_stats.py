"""What a run wrote to the event log: messages and events per job, read back afterwards.

The broker's CPU per job is mostly its messages per job (a message costs it about the same
whatever it holds), so the benchmark reports, beside the broker's CPU, how many log messages
each job took and how many events each carried.  Read after the run (the load generator does no
extra work during it), from the run's start time: a stream can be read from a timestamp, to
the second, so the count may take in a few jobs from just before; per job, that does not
matter.
"""

from __future__ import annotations

import asyncio
import datetime
import uuid
from dataclasses import dataclass

import aio_pika

from shared import wire
from shared.messages import JobEvent
from shared.topology import EVENT_LOG, EVENTS_EXCHANGE, marker_routing_key

READ_TIMEOUT = 120.0


@dataclass(frozen=True, slots=True)
class LogStats:
    messages: int
    events: int
    jobs: int

    @property
    def messages_per_job(self) -> float:
        return self.messages / self.jobs if self.jobs else 0.0

    @property
    def events_per_message(self) -> float:
        return self.events / self.messages if self.messages else 0.0


async def read_since(broker_url: str, since: datetime.datetime) -> LogStats:
    """The job messages in the log from ``since`` to now (markers and the like left out)."""
    marker = uuid.uuid4().hex
    messages = events = 0
    jobs: set[str] = set()
    done = asyncio.Event()
    connection = await aio_pika.connect(broker_url)
    async with connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=2000)
        log = await channel.get_queue(EVENT_LOG)

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            nonlocal messages, events
            key = message.routing_key or ""
            if key == marker_routing_key(marker):
                done.set()
            elif key.startswith("job."):
                read = wire.parse_log_entries(wire.LogDelivery.of(message))
                found = [entry for entry, _ in read.entries if isinstance(entry, JobEvent)]
                if found:
                    messages += 1
                    events += len(found)
                    jobs.update(event.job_id for event in found)
            await message.ack()

        await log.consume(on_message, arguments={"x-stream-offset": since})
        exchange = await channel.get_exchange(EVENTS_EXCHANGE)
        await exchange.publish(aio_pika.Message(marker.encode()), marker_routing_key(marker))
        await asyncio.wait_for(done.wait(), READ_TIMEOUT)
    return LogStats(messages, events, len(jobs))
