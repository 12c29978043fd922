"""What a replica learns from the cancellations stream: cancelled jobs and crash counts."""

from __future__ import annotations

import asyncio
import time

import aio_pika
import orjson

from classifier_service.notices import Notices
from shared import wire
from shared.messages import CrashReport, new_job_id
from shared.topology import CRASHED_ROUTING_KEY
from tests.fakes import FakeBroker


def _report(broker: FakeBroker, jobs: list[str], life: str, offset: int) -> object:
    out = wire.crash_report_message(CrashReport("r", life, tuple(jobs), time.time()))
    out.message.headers = {"x-stream-offset": offset}
    return broker.delivery(out.message, routing_key=CRASHED_ROUTING_KEY)


def test_cancellations_and_crash_reports_are_read_and_acked() -> None:
    async def scenario() -> None:
        broker, notices = FakeBroker(), Notices()
        cancelled, crashed = new_job_id(), new_job_id()
        entries = [
            broker.delivery(
                aio_pika.Message(b"{}", message_id=cancelled, headers={"x-stream-offset": 0}),
                routing_key="job.cancelled",
            ),
            _report(broker, [crashed], "life-1", 1),
            _report(broker, [crashed], "life-1", 2),  # sent twice by a replica that died again
            _report(broker, [crashed, cancelled], "life-2", 3),
        ]
        for entry in entries:
            await notices.on_message(entry)
        await broker.join()  # every entry acked: a stream's acks are its consumer's credit
        assert notices.is_cancelled(cancelled)
        assert not notices.is_cancelled(crashed)
        assert notices.crashes(crashed) == 2
        assert notices.crashes(cancelled) == 1
        assert notices.crashes(new_job_id()) == 0
        assert notices.start_offset() == 4  # a new session resumes after the last one read
        notices.restart()  # the stream was deleted and declared again
        assert notices.start_offset() == "first"

    asyncio.run(scenario())


def test_a_bad_entry_is_passed_over_and_the_next_is_read() -> None:
    async def scenario() -> None:
        broker, notices = FakeBroker(), Notices()
        crashed = new_job_id()
        bad = [
            broker.delivery(aio_pika.Message(b"\xff"), routing_key=CRASHED_ROUTING_KEY),
            broker.delivery(
                aio_pika.Message(orjson.dumps({"v": 2, "jobs": [[1]]})),
                routing_key=CRASHED_ROUTING_KEY,
            ),
            broker.delivery(aio_pika.Message(b"{}", message_id="../x"), routing_key="job.x"),
        ]
        for entry in [*bad, _report(broker, [crashed], "life", 7)]:
            await notices.on_message(entry)
        await broker.join()
        assert notices.crashes(crashed) == 1

    asyncio.run(scenario())


def test_the_oldest_jobs_are_forgotten_past_the_bound() -> None:
    async def scenario() -> None:
        broker, notices = FakeBroker(), Notices(max_jobs=2)
        jobs = [new_job_id() for _ in range(3)]
        for i, job in enumerate(jobs):
            await notices.on_message(_report(broker, [job], f"life-{i}", i))
        assert [notices.crashes(job) for job in jobs] == [0, 1, 1]

    asyncio.run(scenario())


def test_a_crash_report_read_back_is_told_to_whoever_expects_it() -> None:
    async def scenario() -> None:
        broker, notices = FakeBroker(), Notices()
        read_back = notices.expect("life-9")
        await notices.on_message(_report(broker, [new_job_id()], "life-8", 0))
        assert not read_back.is_set()
        await notices.on_message(_report(broker, [new_job_id()], "life-9", 1))
        assert read_back.is_set()

    asyncio.run(scenario())
