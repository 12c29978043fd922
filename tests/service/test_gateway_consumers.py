"""The gateway's consumers on a real broker: no message stops them.

Hostile entries go into the event log (through the events exchange, under the routing keys
the log binds), hostile dead-letter notices into the notices queue and garbage onto the
heartbeats, between ordinary jobs: every ordinary job is still answered, the bad messages are
logged and skipped, and a gateway started afterwards replays the log through all of it.  More
bad log entries than the log consumer's prefetch (and notices than the notices consumer's),
so a consumer that left one unacked would stall.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import aio_pika
import orjson
import pytest

from shared import wire
from shared.messages import ClassifyRequest, JobEvent, new_job_id
from shared.states import JobStatus
from shared.topology import DEAD_LETTER_EXCHANGE, EVENTS_EXCHANGE, HEARTBEAT_ROUTING_KEY
from tests import api
from tests.cluster import MODEL, Cluster

pytestmark = pytest.mark.timeout(300)

IMAGES = ["cat.jpg", "coffee.jpg", "camera.jpg"]
# The rounds together publish more bad entries than the log consumer's prefetch (2,000
# unacked entries would stall it) and more bad notices than the notices consumer's (10).
ROUNDS = 3
DIGITS = 700
NOTICES = 4


def _digit(index: int) -> str:
    """A character that passes ``str.isdigit`` and then fails ``int()``: a check passed, a
    conversion failed, so not the MessageError a parser raises on purpose."""
    return "\N{SUPERSCRIPT TWO}\N{SUPERSCRIPT THREE}\N{CIRCLED DIGIT ONE}"[index % 3]


def _hostile_log_entries() -> list[tuple[bytes, str]]:
    """(body, routing key) of entries no gateway can use, failing in many different ways."""
    event = orjson.loads(
        JobEvent(new_job_id(), JobStatus.SUCCEEDED, MODEL, "x.jpg", finished_at=1.0).to_json()
    )
    odd = [
        (b"not json", "job.queued"),
        (b"\xff\xfe\x00", "job.started"),
        (orjson.dumps({**event, "v": 99}), "job.succeeded"),
        (orjson.dumps({**event, "result": {"label": [[[]]]}}), "job.succeeded"),
        (orjson.dumps({**event, "model": "m" * 5000}), "job.queued"),
        (b"[" * 5000 + b"]" * 5000, "job.cancelled"),
        (b"[]", "job.forgotten"),
        (b'{"v": 2, "batch_id": 1}', "job.batch"),
        (bytes(range(256)), f"marker.{new_job_id()}"),
    ]
    digits = [
        (orjson.dumps({**event, "batch": f"{new_job_id()}/{_digit(i)}/5"}), "job.failed")
        for i in range(DIGITS)
    ]
    return odd + digits


def _hostile_notices() -> list[aio_pika.Message]:
    """Dead letters whose headers a producer could have written: they fail to parse in
    different ways, or name no job at all."""
    notices = []
    headers: list[dict[str, object]] = [
        {"batch": f"{new_job_id()}/{_digit(i)}/5"} for i in range(NOTICES)
    ]
    headers += [
        {"queued_at_us": "soon"},
        {"model": {"nested": [1, 2]}, "image_name": bytearray(b"\xff\xfe")},
        {"x-first-death-reason": {"a": "table"}, "v": 7},
        {"v": True, "queued_at_us": 2**62},
    ]
    for extra in headers:
        out = wire.request_message(
            ClassifyRequest(new_job_id(), MODEL, "x.jpg", time.time(), image=b"x")
        )
        out.message.headers = {**(out.message.headers or {}), **extra}  # type: ignore[dict-item]
        notices.append(out.message)
    notices.append(aio_pika.Message(b"junk", message_id="not a job id"))
    return notices


async def _publish_hostile(broker_url: str) -> tuple[int, int, int]:
    connection = await aio_pika.connect(broker_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        events = await channel.get_exchange(EVENTS_EXCHANGE)
        dead = await channel.get_exchange(DEAD_LETTER_EXCHANGE)
        entries = _hostile_log_entries()
        await asyncio.gather(
            *(events.publish(aio_pika.Message(body), key) for body, key in entries)
        )
        notices = _hostile_notices()
        for notice in notices:
            await dead.publish(notice, "classify")
        beats = [b"", b"{}", b'{"v": 2, "replica": 7}', b"\x00" * 100]
        for beat in beats:
            await events.publish(aio_pika.Message(beat), HEARTBEAT_ROUTING_KEY)
    return len(entries), len(notices), len(beats)


async def _dead_letter(broker_url: str) -> str:
    """An ordinary dead letter, as a work queue writes it: its job must show failed."""
    request = ClassifyRequest(new_job_id(), MODEL, "never.jpg", time.time(), image=b"\xff\xd8")
    out = wire.request_message(request)
    out.message.headers = {**(out.message.headers or {}), "x-first-death-reason": "rejected"}
    connection = await aio_pika.connect(broker_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        dead = await channel.get_exchange(DEAD_LETTER_EXCHANGE)
        await dead.publish(out.message, "classify")
    return request.job_id


def _wait_until(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_hostile_log_entries_and_notices_are_skipped_and_every_job_is_answered(
    cluster: Cluster, figure: Callable[[str], None]
) -> None:
    cluster.start_replica()
    gateway, url = cluster.start_gateway()
    cluster.wait_replicas(1)
    jobs: list[str] = []
    sent = [0, 0, 0]
    for round_ in range(ROUNDS):
        jobs.append(api.submit(url, MODEL, IMAGES[round_])["job_id"])
        counts = asyncio.run(_publish_hostile(cluster.node.url))
        sent = [total + count for total, count in zip(sent, counts, strict=True)]
    jobs.append(api.submit(url, MODEL, "coffee.jpg")["job_id"])
    dead_job = asyncio.run(_dead_letter(cluster.node.url))

    finals = [api.wait_final(url, job_id) for job_id in jobs]
    assert [final["status"] for final in finals] == ["succeeded"] * len(jobs)
    _wait_until(
        lambda: api.get(url, f"/classifications/{dead_job}").status == 200,
        "the ordinary dead letter never reached the log",
    )
    dead = api.wait_final(url, dead_job)
    assert (dead["status"], dead["error"]["code"]) == ("failed", "dead_lettered")
    assert gateway.alive()
    assert api.get(url, "/readyz").status == 200
    # The replica is still online: its heartbeats are read past the garbage.
    cluster.wait_replicas(1)
    logged = gateway.log_tail(5_000_000)
    assert "ignoring malformed event" in logged
    assert "ignoring malformed heartbeat" in logged
    # Each hostile notice was settled one way or another (how depends on what the parser
    # makes of its headers), and the notices consumer went on to the ordinary one.
    assert "dead-letter notice that cannot be read" in logged or "dead-lettered: " in logged

    # A gateway started now replays the whole log, garbage included, and says the same.
    _, late = cluster.start_gateway()
    for job_id, final in zip(jobs, finals, strict=True):
        assert api.get(late, f"/classifications/{job_id}").json() == final
    figure(
        f"{sent[0]} hostile log entries, {sent[1]} hostile dead-letter notices and {sent[2]} "
        f"bad heartbeats between {len(jobs)} jobs: {len(jobs)}/{len(jobs)} answered, the "
        "ordinary dead letter shown failed, a late gateway replayed through them"
    )
