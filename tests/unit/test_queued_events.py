"""gateway/queued_events.py: a confirmed job's "queued" event is published until the broker
confirms it, across sessions, and what is confirmed meanwhile goes out together (no broker,
no sleeps)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from gateway.queued_events import QueuedEvents
from shared.errors import BrokerUnavailable
from shared.messages import JobEvent
from tests.fake_log import queued


class Events:
    """Publishes, or fails as a lost connection does while ``down``; ``hold`` keeps each
    publish in flight until it is set."""

    def __init__(self) -> None:
        self.down = False
        self.published: list[str] = []
        self.messages: list[list[str]] = []
        self.hold: asyncio.Event | None = None
        self.publishing = asyncio.Event()

    async def publish(self, events: Sequence[JobEvent]) -> None:
        self.publishing.set()
        if self.hold is not None:
            await self.hold.wait()
        if self.down:
            raise BrokerUnavailable("not connected to the broker")
        self.messages.append([event.job_id for event in events])
        self.published += self.messages[-1]


def test_an_event_the_broker_did_not_confirm_goes_out_with_the_next_session() -> None:
    async def scenario() -> None:
        events = Events()
        unsent = QueuedEvents(events.publish)
        first, second = queued(), queued()
        unsent.confirmed(first)
        await unsent.settled()
        assert (events.published, len(unsent)) == ([first.job_id], 0)

        events.down = True
        unsent.confirmed(second)
        await unsent.settled()
        assert len(unsent) == 1
        unsent.resend()  # still down: kept again
        await unsent.settled()
        assert len(unsent) == 1

        events.down = False
        unsent.resend()
        await unsent.settled()
        assert (events.published, len(unsent)) == ([first.job_id, second.job_id], 0)

    asyncio.run(scenario())


def test_unsent_events_are_bounded_oldest_given_up_first() -> None:
    async def scenario() -> None:
        events = Events()
        events.down = True
        unsent = QueuedEvents(events.publish, limit=2)
        jobs = [queued() for _ in range(3)]
        for job in jobs:
            unsent.confirmed(job)
        await unsent.settled()
        events.down = False
        unsent.resend()
        await unsent.settled()
        assert events.published == [job.job_id for job in jobs[1:]]

    asyncio.run(scenario())


def test_events_confirmed_while_one_is_published_go_out_together() -> None:
    async def scenario() -> None:
        events = Events()
        events.hold = asyncio.Event()
        unsent = QueuedEvents(events.publish, most=3)
        jobs = [queued() for _ in range(6)]
        unsent.confirmed(jobs[0])
        await events.publishing.wait()  # its publish is under way, and held
        for job in jobs[1:]:
            unsent.confirmed(job)
        events.hold.set()
        await unsent.settled()
        ids = [job.job_id for job in jobs]
        # The first alone, at once; the five behind it in messages of at most three.
        assert events.messages == [ids[:1], ids[1:4], ids[4:]]
        assert len(unsent) == 0

    asyncio.run(scenario())
