"""The replica on an in-memory broker: batching, acking, the guard, poison, drain, deaths.

Unit tests (tests/fakes.py stands in for RabbitMQ): each runs the real ``Replica`` with a
stand-in for inference and waits on the broker's state (``join``, ``until``), never on time,
except where a time limit is the behaviour under test.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import aio_pika
import numpy as np
import orjson
import pytest

from classifier_service.loaded import LoadedModel
from classifier_service.settings import ClassifierSettings
from classifier_service.worker import DIED, Replica
from shared import wire
from shared.catalog import ModelSpec
from shared.errors import ImageDecodeError, ImgqError
from shared.messages import ClassifyRequest, CrashReport, Label, new_job_id
from shared.states import JobStatus
from shared.topology import (
    CRASH_LIMIT,
    CRASHED_ROUTING_KEY,
    EVENTS_EXCHANGE,
    WEBHOOK_DUE,
    WEBHOOK_HEADER,
)
from tests.fakes import FakeBroker, FakeSessions

MODEL = "tiny"
LABELS = (Label("red", 0, 0.9),)
T = TypeVar("T")


def _model() -> LoadedModel:
    return LoadedModel(
        ModelSpec(MODEL, "Tiny", 32),
        lambda pixels: np.zeros((len(pixels), 1), dtype=np.float32),
        ("red",),
    )


class Inference:
    """Stands in for classify_batch: records each batch's images, answers from ``answers``
    (by image bytes; labels otherwise), and can be held on an event."""

    def __init__(self) -> None:
        self.batches: list[list[bytes]] = []
        self.answers: dict[bytes, ImgqError | BaseException] = {}
        self.hold: threading.Event | None = None
        self.threads: list[int] = []

    def __call__(
        self, model: LoadedModel, images: Sequence[bytes], delay: float
    ) -> list[tuple[Label, ...] | ImgqError]:
        self.batches.append(list(images))
        self.threads.append(threading.get_ident())
        if self.hold is not None:
            self.hold.wait(30)
        outcomes: list[tuple[Label, ...] | ImgqError] = []
        for image in images:
            answer = self.answers.get(image)
            if isinstance(answer, ImgqError):
                outcomes.append(answer)
            elif answer is not None:
                raise answer
            else:
                outcomes.append(LABELS)
        return outcomes


def _settings(tmp_path: Path, **env: str) -> ClassifierSettings:
    return ClassifierSettings.from_env(
        {
            "IMGQ_REPLICA_ID": "replica-t",
            "IMGQ_HEALTH_FILE": str(tmp_path / "replica.alive"),
            "IMGQ_HEARTBEAT_INTERVAL": "0.1",
            **env,
        }
    )


def _job(image: bytes = b"image", **changes: Any) -> ClassifyRequest:
    return ClassifyRequest(
        new_job_id(), changes.pop("model", MODEL), "cat.jpg", time.time(), image=image
    )


@asynccontextmanager
async def _replica(
    tmp_path: Path, inference: Inference | None = None, **env: str
) -> AsyncIterator[tuple[Replica, FakeBroker, FakeSessions]]:
    """A running replica on a fake broker; stopped (and its exit status checked) at the end."""
    broker = FakeBroker()
    sessions: list[FakeSessions] = []

    def connect(replica: Replica) -> FakeSessions:
        sessions.append(FakeSessions(replica, broker))
        return sessions[0]

    replica = Replica(
        _settings(tmp_path, **env),
        {MODEL: _model()},
        classify=inference or Inference(),
        sessions=connect,
    )
    running = asyncio.create_task(replica.run())
    async with asyncio.timeout(10):
        await sessions[0].ready.wait()
    try:
        yield replica, broker, sessions[0]
    finally:
        if not running.done():
            replica.stop()
        assert await running in (0, DIED)


def _run(coroutine: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(coroutine())


def _statuses(broker: FakeBroker, job: ClassifyRequest) -> list[JobStatus]:
    return [event.status for event in broker.events_of(job.job_id)]


def test_a_job_is_acked_only_once_its_results_are_confirmed(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with _replica(tmp_path) as (_, broker, sessions):
            broker.holding_confirms = True
            job = _job()
            await sessions.deliver(broker.request(job))
            await broker.until(lambda: JobStatus.SUCCEEDED in _statuses(broker, job))
            assert broker.settled == {}, "acked before the broker confirmed the result"
            broker.release_confirms()
            await broker.join()
            assert broker.settled == {1: ("ack", False)}
            assert _statuses(broker, job) == [JobStatus.STARTED, JobStatus.SUCCEEDED]

    _run(scenario)


def test_a_batchs_results_go_out_with_the_next_batchs_started_in_one_message(
    tmp_path: Path,
) -> None:
    inference = Inference()
    inference.hold = threading.Event()

    async def scenario() -> None:
        async with _replica(tmp_path, inference, IMGQ_BATCH_SIZE="1") as (_, broker, sessions):
            first, second = _job(b"first"), _job(b"second")
            await sessions.deliver(broker.request(first))
            await broker.until(lambda: len(inference.batches) == 1)
            await sessions.deliver(broker.request(second))  # waits while the first runs
            inference.hold.set()
            await broker.join()
            messages = [
                [(e.job_id, e.status) for e in events] for events in broker.event_messages()
            ]
            assert messages == [
                [(first.job_id, JobStatus.STARTED)],
                [(first.job_id, JobStatus.SUCCEEDED), (second.job_id, JobStatus.STARTED)],
                [(second.job_id, JobStatus.SUCCEEDED)],
            ]
            assert broker.settled == {1: ("ack", False), 2: ("ack", False)}

    _run(scenario)


def test_a_final_event_with_a_callback_goes_alone_marked_for_the_webhooks(
    tmp_path: Path,
) -> None:
    """The webhooks exchange routes on a message's headers: a final event whose job has a
    callback cannot share its message, or no gateway would be told to post it."""
    inference = Inference()
    inference.hold = threading.Event()

    async def scenario() -> None:
        async with _replica(tmp_path, inference, IMGQ_BATCH_SIZE="1") as (_, broker, sessions):
            hooked = replace(_job(b"hooked"), callback="https://hooks.example/imgq")
            plain = _job(b"plain")
            await sessions.deliver(broker.request(hooked))
            await broker.until(lambda: len(inference.batches) == 1)
            await sessions.deliver(broker.request(plain))
            inference.hold.set()
            await broker.join()
            messages = [
                [(e.job_id, e.status) for e in events] for events in broker.event_messages()
            ]
            assert messages == [
                [(hooked.job_id, JobStatus.STARTED)],
                [(hooked.job_id, JobStatus.SUCCEEDED)],
                [(plain.job_id, JobStatus.STARTED)],
                [(plain.job_id, JobStatus.SUCCEEDED)],
            ]
            [alone] = [
                p
                for p in broker.published
                if p.exchange == EVENTS_EXCHANGE and p.routing_key == "job.succeeded"
            ]
            assert alone.events()[0].job_id == hooked.job_id
            assert (alone.message.headers or {})[WEBHOOK_HEADER] == WEBHOOK_DUE
            assert broker.settled == {1: ("ack", False), 2: ("ack", False)}

    _run(scenario)


def test_the_next_batch_runs_while_the_last_one_waits_for_its_confirms(tmp_path: Path) -> None:
    inference = Inference()

    async def scenario() -> None:
        async with _replica(tmp_path, inference, IMGQ_BATCH_SIZE="1") as (_, broker, sessions):
            broker.holding_confirms = True
            jobs = [_job(b"%d" % i) for i in range(3)]
            for job in jobs:
                await sessions.deliver(broker.request(job))
            # Every job inferred and its result sent while not one confirm has come back.
            await broker.until(lambda: JobStatus.SUCCEEDED in _statuses(broker, jobs[-1]))
            assert len(inference.batches) == 3
            assert broker.settled == {}, "acked before the broker confirmed the results"
            broker.release_confirms()
            await broker.join()
            assert broker.settled == {t: ("ack", False) for t in (1, 2, 3)}

    _run(scenario)


def test_a_drain_waits_for_the_confirms_of_what_was_run(tmp_path: Path) -> None:
    async def scenario() -> None:
        broker = FakeBroker()
        sessions: list[FakeSessions] = []
        replica = Replica(
            _settings(tmp_path),
            {MODEL: _model()},
            classify=Inference(),
            sessions=lambda r: sessions.append(FakeSessions(r, broker)) or sessions[0],
        )
        running = asyncio.create_task(replica.run())
        await sessions[0].ready.wait()
        broker.holding_confirms = True
        job = _job()
        await sessions[0].deliver(broker.request(job))
        await broker.until(lambda: JobStatus.SUCCEEDED in _statuses(broker, job))
        replica.stop()
        await sessions[0].stopped.wait()
        assert not running.done()
        broker.release_confirms()
        assert await running == 0
        assert broker.settled == {1: ("ack", False)}

    asyncio.run(scenario())


def test_a_confirm_that_never_comes_ends_the_session_and_gives_the_job_back(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        broker = FakeBroker()
        sessions: list[FakeSessions] = []
        replica = Replica(
            _settings(tmp_path),
            {MODEL: _model()},
            classify=Inference(),
            sessions=lambda r: sessions.append(FakeSessions(r, broker, 0.2)) or sessions[0],
        )
        running = asyncio.create_task(replica.run())
        await sessions[0].ready.wait()
        broker.holding_confirms = True  # they never come
        await sessions[0].deliver(broker.request(_job()))
        await broker.join()
        assert broker.lost.is_set(), "the session was not given up"
        assert broker.settled == {1: ("nack", True)}  # back to the queue, never acked
        replica.stop()
        assert await running == 0

    asyncio.run(scenario())


def test_a_full_batch_is_one_forward_pass_and_one_multiple_ack(tmp_path: Path) -> None:
    inference = Inference()

    async def scenario() -> None:
        async with _replica(
            tmp_path, inference, IMGQ_BATCH_SIZE="4", IMGQ_BATCH_WAIT_MS="60000"
        ) as (
            _,
            broker,
            sessions,
        ):
            for i in range(4):
                await sessions.deliver(broker.request(_job(b"image-%d" % i)))
            await broker.join()
            assert broker.settled == {t: ("ack", True) for t in (1, 2, 3, 4)}
            assert [len(batch) for batch in inference.batches] == [4]

    _run(scenario)


def test_a_failed_image_fails_alone(tmp_path: Path) -> None:
    inference = Inference()
    inference.answers[b"broken"] = ImageDecodeError("cannot decode image")

    async def scenario() -> None:
        async with _replica(
            tmp_path, inference, IMGQ_BATCH_SIZE="2", IMGQ_BATCH_WAIT_MS="60000"
        ) as (
            _,
            broker,
            sessions,
        ):
            bad, good = _job(b"broken"), _job(b"fine")
            await sessions.deliver(broker.request(bad))
            await sessions.deliver(broker.request(good))
            await broker.join()
            assert broker.events_of(bad.job_id)[-1].error.code == "image_decode_failed"
            assert broker.events_of(good.job_id)[-1].status is JobStatus.SUCCEEDED
            assert set(broker.settled.values()) == {("ack", True)}

    _run(scenario)


def _bad_requests() -> list[tuple[aio_pika.Message, str]]:
    """Messages a hostile or broken producer could send, each with what its reason must say."""
    good = wire.request_message(_job()).message
    unicode_batch = aio_pika.Message(
        b"image",
        headers={**good.headers, "batch": f"{new_job_id()}/²/3"},
        message_id=good.message_id,
    )
    no_model = aio_pika.Message(
        b"image",
        headers={k: v for k, v in good.headers.items() if k != "model"},
        message_id=good.message_id,
    )
    v1_list_version = aio_pika.Message(orjson.dumps({"v": [1], "job_id": new_job_id()}))
    return [
        (unicode_batch, "'batch' must be"),
        (no_model, "'model'"),
        (v1_list_version, "schema version"),
        (aio_pika.Message(b"\x00 not json"), "must be the schema version 2"),
        (aio_pika.Message(b"", headers={"v": 2}, message_id=new_job_id()), "queued_at_us"),
    ]


def test_bad_messages_are_dead_lettered_with_their_reason_and_the_consumer_goes_on(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        async with _replica(tmp_path) as (replica, broker, sessions):
            bad = _bad_requests()
            good = [_job(b"%d" % i) for i in range(len(bad))]
            for (message, _), job in zip(bad, good, strict=True):
                await sessions.deliver(broker.delivery(message))
                await sessions.deliver(broker.request(job))
            await broker.join()
            dead = broker.dead_lettered()
            assert len(dead) == len(bad)
            for letter, (message, reason) in zip(dead, bad, strict=True):
                assert letter.message.body == message.body
                assert reason in letter.message.headers["dead_reason"]
            for job in good:
                assert _statuses(broker, job) == [JobStatus.STARTED, JobStatus.SUCCEEDED]
            # Every delivery acked (the good ones maybe a batch at a time), none rejected.
            assert len(broker.settled) == 2 * len(bad)
            assert set(broker.settled.values()) <= {("ack", False), ("ack", True)}
            dead_lettered = replica.metrics.registry.get_sample_value(
                "imgq_replica_dead_lettered_total"
            )
            assert dead_lettered == len(bad)

    _run(scenario)


def test_a_failure_inside_the_guard_settles_only_that_delivery(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with _replica(tmp_path) as (replica, broker, sessions):
            cancelled, good = _job(b"a"), _job(b"b")
            await replica.notices.on_message(_cancellation(broker, cancelled.job_id))
            # Skipping the cancelled job means acking it: that ack fails (an unexpected error,
            # the channel still open), so the guard dead-letters it instead, and goes on.
            broker.fail_next_settlement = RuntimeError("the ack went wrong")
            await sessions.deliver(broker.request(cancelled))
            await sessions.deliver(broker.request(good))
            await broker.join()
            (letter,) = broker.dead_lettered()
            assert "the ack went wrong" in letter.message.headers["dead_reason"]
            assert _statuses(broker, good)[-1] is JobStatus.SUCCEEDED

    _run(scenario)


def test_when_even_the_dead_letter_cannot_be_published_the_delivery_is_rejected(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        async with _replica(tmp_path) as (_, broker, sessions):
            broker.refuse_publishes = ConnectionError("the channel is closing")
            await sessions.deliver(broker.request(_job(model="no-such-model")))
            await broker.join()
            # The broker dead-letters it itself then (x-first-death-reason: rejected).
            assert broker.settled == {1: ("reject", False)}

    _run(scenario)


def test_a_delivery_lost_with_its_channel_is_let_go(tmp_path: Path) -> None:
    inference = Inference()
    inference.hold = threading.Event()

    async def scenario() -> None:
        async with _replica(tmp_path, inference) as (replica, broker, sessions):
            job = _job()
            await sessions.deliver(broker.request(job))
            await broker.until(lambda: bool(inference.batches))
            broker.close_channel()  # a broker restart, mid-inference
            broker.refuse_publishes = ConnectionError("channel closed")
            inference.hold.set()
            broker.reopen()  # the next session
            after = _job(b"after")
            await sessions.deliver(broker.request(after))
            await broker.join()
            # The first was settled on nothing (its channel was gone: the broker has it back),
            # and the replica went on with the next.
            assert broker.settled == {2: ("ack", False)}
            assert _statuses(broker, after)[-1] is JobStatus.SUCCEEDED
            assert len(replica.acks) == 0

    _run(scenario)


def _cancellation(broker: FakeBroker, job_id: str) -> Any:
    return broker.delivery(aio_pika.Message(b"{}", message_id=job_id), routing_key="job.cancelled")


def _crash_report(broker: FakeBroker, jobs: list[str], life: str) -> Any:
    report = CrashReport("replica-x", life, tuple(jobs), time.time())
    return broker.delivery(
        wire.crash_report_message(report).message, routing_key=CRASHED_ROUTING_KEY
    )


def test_a_cancelled_job_is_skipped(tmp_path: Path) -> None:
    inference = Inference()

    async def scenario() -> None:
        async with _replica(tmp_path, inference) as (replica, broker, sessions):
            job = _job()
            await replica.notices.on_message(_cancellation(broker, job.job_id))
            await sessions.deliver(broker.request(job))
            await broker.join()
            assert broker.events_of(job.job_id) == []
            assert inference.batches == []

    _run(scenario)


def test_a_job_that_crashed_replicas_runs_alone_and_at_the_limit_is_poison(
    tmp_path: Path,
) -> None:
    inference = Inference()

    async def scenario() -> None:
        async with _replica(
            tmp_path, inference, IMGQ_BATCH_SIZE="4", IMGQ_BATCH_WAIT_MS="60000"
        ) as (
            replica,
            broker,
            sessions,
        ):
            suspect, poison, a, b = (_job(image) for image in (b"s", b"p", b"a", b"b"))
            await replica.notices.on_message(
                _crash_report(broker, [suspect.job_id, a.job_id], "l1")
            )
            # The same crash reported twice counts once; three deaths make poison.
            for life in ("l1", "l1", "l2", "l3"):
                await replica.notices.on_message(_crash_report(broker, [poison.job_id], life))
            # a's crash record came from a batch it shared: a gets it again, as a suspect.
            for job in (suspect, poison, a, b):
                await sessions.deliver(broker.request(job, redelivered=True))
            await broker.join()
            assert sorted(inference.batches) == sorted([[b"s"], [b"a"], [b"b"]])
            (letter,) = broker.dead_lettered()
            assert letter.message.message_id == poison.job_id
            assert f"crashed {CRASH_LIMIT} replicas" in letter.message.headers["dead_reason"]
            final = broker.events_of(poison.job_id)[-1]
            assert (final.status, final.error.code) == (JobStatus.FAILED, "dead_lettered")
            for job in (suspect, a, b):
                assert _statuses(broker, job)[-1] is JobStatus.SUCCEEDED

    _run(scenario)


def test_a_batch_past_the_time_limit_fails_and_the_next_runs_on_a_fresh_thread(
    tmp_path: Path,
) -> None:
    inference = Inference()
    stuck_on = inference.hold = threading.Event()

    async def scenario() -> None:
        async with _replica(tmp_path, inference, IMGQ_JOB_TIME_LIMIT="0.2") as (
            _,
            broker,
            sessions,
        ):
            stuck, after = _job(b"stuck"), _job(b"after")
            await sessions.deliver(broker.request(stuck))
            await broker.until(lambda: JobStatus.FAILED in _statuses(broker, stuck))
            inference.hold = None  # the next batch runs freely; the first thread stays stuck
            await sessions.deliver(broker.request(after))
            await broker.join()
            failure = broker.events_of(stuck.job_id)[-1].error
            assert failure.code == "time_limit_exceeded"
            assert "0.2 s" in failure.message
            assert _statuses(broker, after)[-1] is JobStatus.SUCCEEDED
            assert inference.threads[0] != inference.threads[1]

    try:
        _run(scenario)
    finally:
        # Free the abandoned thread: it is not a daemon, and the interpreter would wait out its
        # hold (30 s) at exit, after the last test.
        stuck_on.set()


def test_sigterm_drains_the_job_in_hand_then_stops(tmp_path: Path) -> None:
    inference = Inference()
    inference.hold = threading.Event()

    async def scenario() -> None:
        broker = FakeBroker()
        sessions: list[FakeSessions] = []
        replica = Replica(
            _settings(tmp_path),
            {MODEL: _model()},
            classify=inference,
            sessions=lambda r: sessions.append(FakeSessions(r, broker)) or sessions[0],
        )
        running = asyncio.create_task(replica.run())
        await sessions[0].ready.wait()
        job = _job()
        await sessions[0].deliver(broker.request(job))
        await broker.until(lambda: bool(inference.batches))
        replica.stop()
        await sessions[0].stopped.wait()  # no new jobs while draining
        assert not replica.state().ready
        assert not running.done()
        inference.hold.set()
        assert await running == 0
        # Finished and acked, not given back: the drain waited for it.
        assert broker.settled == {1: ("ack", False)}
        assert _statuses(broker, job)[-1] is JobStatus.SUCCEEDED
        assert not (tmp_path / "replica.alive").exists()

    asyncio.run(scenario())


class Fatal(BaseException):
    """What no guard catches: a task that meets it dies."""


def test_a_background_task_that_dies_ends_the_replica(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    inference = Inference()
    inference.answers[b"fatal"] = Fatal()

    async def scenario() -> int:
        broker = FakeBroker()
        sessions: list[FakeSessions] = []
        replica = Replica(
            _settings(tmp_path),
            {MODEL: _model()},
            classify=inference,
            sessions=lambda r: sessions.append(FakeSessions(r, broker)) or sessions[0],
        )
        running = asyncio.create_task(replica.run())
        await sessions[0].ready.wait()
        await sessions[0].deliver(broker.request(_job(b"fatal")))
        async with asyncio.timeout(10):
            return await running

    with caplog.at_level(logging.CRITICAL, logger="shared.session"):
        assert asyncio.run(scenario()) == DIED
    assert "background task 'batches' died" in caplog.text


def test_the_health_file_and_heartbeats_say_what_the_replica_is_doing(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with _replica(tmp_path) as (replica, broker, _):
            health = replica.vitals.health()
            assert (health.ready, health.stalled, health.reason) == (True, False, "consuming")
            await broker.until(
                lambda: any(p.routing_key == "replica.heartbeat" for p in broker.published)
            )
            beat = next(p for p in broker.published if p.routing_key == "replica.heartbeat")
            parsed = wire.parse_heartbeat(beat.message)
            assert (parsed.replica, parsed.models, parsed.stalled) == ("replica-t", (MODEL,), False)
            replica.attach(None)  # the broker went away: alive, not ready
            health = replica.vitals.health()
            assert (health.ready, health.reason) == (False, "not connected to the broker")

    _run(scenario)
