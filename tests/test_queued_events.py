"""gateway/queued_events.py: a confirmed job's "queued" event is published until the broker
confirms it, across sessions (no broker, no sleeps)."""

from __future__ import annotations

import asyncio

from gateway.queued_events import QueuedEvents
from shared.errors import BrokerUnavailable
from shared.messages import JobEvent
from tests.fake_log import queued


class Events:
    """Publishes, or fails as a lost connection does while ``down``."""

    def __init__(self) -> None:
        self.down = False
        self.published: list[str] = []

    async def publish(self, event: JobEvent) -> None:
        if self.down:
            raise BrokerUnavailable("not connected to the broker")
        self.published.append(event.job_id)


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
