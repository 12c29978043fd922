"""The replica's inbox: deliveries in, batches out (unit tests, no broker, no sleeps)."""

from __future__ import annotations

import asyncio
import time

import aio_pika

from classifier_service.acks import AckBook
from classifier_service.health import Progress
from classifier_service.inbox import Inbox
from tests.fakes import FakeBroker


def _inbox() -> tuple[Inbox, AckBook, FakeBroker]:
    acks = AckBook()
    return Inbox(acks, Progress(lambda: len(acks), 60)), acks, FakeBroker()


async def _deliver(inbox: Inbox, broker: FakeBroker, count: int) -> None:
    for i in range(count):
        await inbox.deliver(broker.delivery(aio_pika.Message(b"%d" % i)))


def test_jobs_already_in_hand_form_batches_with_no_wait() -> None:
    async def scenario() -> list[int]:
        inbox, _, broker = _inbox()
        await _deliver(inbox, broker, 10)
        return [len(await inbox.batch(4, 0)) for _ in range(3)]

    assert asyncio.run(scenario()) == [4, 4, 2]


def test_batch_size_one_never_batches() -> None:
    async def scenario() -> list[int]:
        inbox, _, broker = _inbox()
        await _deliver(inbox, broker, 3)
        return [len(await inbox.batch(1, 10)) for _ in range(3)]

    assert asyncio.run(scenario()) == [1, 1, 1]


def test_the_batch_wait_collects_jobs_that_arrive_after_the_first() -> None:
    async def scenario() -> int:
        inbox, _, broker = _inbox()
        await _deliver(inbox, broker, 1)
        taking = asyncio.create_task(inbox.batch(3, 30))
        # The others arrive while the batch waits (one loop turn apart), and it is done as
        # soon as it is full: long before its 30 s wait.
        for _ in range(2):
            await asyncio.sleep(0)
            assert not taking.done()
            await _deliver(inbox, broker, 1)
        async with asyncio.timeout(10):
            return len(await taking)

    assert asyncio.run(scenario()) == 3


def test_a_lone_job_is_held_no_longer_than_the_batch_wait() -> None:
    async def scenario() -> tuple[int, float]:
        inbox, _, broker = _inbox()
        await _deliver(inbox, broker, 1)
        t0 = time.monotonic()
        batch = await inbox.batch(4, 0.05)
        return len(batch), time.monotonic() - t0

    size, waited = asyncio.run(scenario())
    assert size == 1
    # The wait is the behaviour: at least the 50 ms asked, and not the minutes a lost timer
    # would take (generous either way for a loaded machine).
    assert 0.04 <= waited < 10


def test_every_delivery_is_in_the_ack_book_until_settled() -> None:
    async def scenario() -> tuple[int, int]:
        inbox, acks, broker = _inbox()
        await _deliver(inbox, broker, 3)
        before = len(acks)
        broker.close_channel()
        inbox.drop_closed()  # the broker took them back with their channel
        return before, len(acks)

    assert asyncio.run(scenario()) == (3, 0)


def test_a_delivery_on_a_channel_already_closed_is_not_taken() -> None:
    async def scenario() -> tuple[int, int]:
        inbox, acks, broker = _inbox()
        message = broker.delivery(aio_pika.Message(b"x"))
        broker.close_channel()
        await inbox.deliver(message)  # never raises: aio-pika would only log it
        return len(inbox), len(acks)

    assert asyncio.run(scenario()) == (0, 0)
