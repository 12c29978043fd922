"""Nothing accepted is ever lost: scale-out, crashes, restarts and overload, for real.

Each scenario runs on a fresh RabbitMQ node of its own with gateways and replicas as
real processes, kills or restarts them, and checks that every job that got a 202 ends
with exactly one visible final state, whichever gateway is asked.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import re
import shutil
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aio_pika
import orjson
import pytest

from compose.supervise import Supervisor
from shared import wire
from shared.messages import ClassifyRequest, JobEvent, new_job_id
from shared.states import JobStatus
from shared.topology import CRASH_LIMIT, DEAD_LETTER_QUEUE, EVENT_LOG, EVENTS_EXCHANGE
from tests import api
from tests.cluster import (
    DRAINED,
    MODEL,
    WORK_QUEUE,
    Cluster,
    dir_size,
    final_events_per_job,
    queue_depths,
    read_log,
)

pytestmark = pytest.mark.timeout(420)

Figure = Callable[[str], None]
Incoming = aio_pika.abc.AbstractIncomingMessage
IMAGES = ["cat.jpg", "coffee.jpg", "camera.jpg"]
EXPECTED = {"cat.jpg": {"Egyptian cat", "tiger cat", "tabby"}, "coffee.jpg": {"espresso"}}
EXPECTED["camera.jpg"] = {"tripod"}


def _submit_many(urls: list[str], count: int) -> list[tuple[str, str]]:
    """Submit ``count`` jobs round-robin over the gateways; (job_id, image) in accept order."""

    def one(i: int) -> tuple[str, str]:
        image = IMAGES[i % len(IMAGES)]
        return api.submit(urls[i % len(urls)], MODEL, image)["job_id"], image

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(count)))


def _wait_all(urls: list[str], job_ids: list[str], timeout: float = 300) -> list[dict[str, Any]]:
    with ThreadPoolExecutor(32) as pool:
        return list(
            pool.map(
                lambda ij: api.wait_final(urls[ij[0] % len(urls)], ij[1], timeout),
                enumerate(job_ids),
            )
        )


def _assert_right(jobs: list[tuple[str, str]], finals: list[dict[str, Any]]) -> None:
    for (job_id, image), final in zip(jobs, finals, strict=True):
        assert final["job_id"] == job_id
        assert final["status"] == "succeeded", final
        assert final["result"][0]["label"] in EXPECTED[image]


def test_thousand_jobs_two_gateways_three_replicas(cluster: Cluster, figure: Figure) -> None:
    for _ in range(3):
        cluster.start_replica()
    cluster.start_gateway()
    cluster.start_gateway()
    cluster.wait_replicas(3)
    started = time.monotonic()
    jobs = _submit_many(cluster.urls, 1000)
    finals = _wait_all(cluster.urls, [j for j, _ in jobs])
    elapsed = time.monotonic() - started
    _assert_right(jobs, finals)
    # Every gateway gives the same single final answer for every job.
    a, b = cluster.urls
    for job_id, _ in jobs:
        left = api.get(a, f"/classifications/{job_id}").json()
        assert left == api.get(b, f"/classifications/{job_id}").json()
    assert queue_depths(cluster.node.url) == DRAINED
    finals_in_log = final_events_per_job(read_log(cluster.node.url))
    duplicates = sum(n - 1 for n in finals_in_log.values())
    assert set(finals_in_log) == {j for j, _ in jobs}
    by_replica = Counter(f["replica"] for f in finals)
    assert len(by_replica) == 3
    figure(
        f"1000 jobs, 2 gateways, 3 replicas: {elapsed:.1f} s ({1000 / elapsed:.0f} jobs/s), "
        f"lost 0, duplicate final events in the log {duplicates}, per replica {dict(by_replica)}"
    )


def test_replicas_sigkilled_during_a_run(cluster: Cluster, figure: Figure) -> None:
    # 0.1 s more per job: ONNX Runtime would finish the 240 jobs before a few kills happened.
    slow = {"IMGQ_DEBUG_DELAY": "0.1"}
    cluster.start_replica(**slow)
    cluster.start_replica(**slow)
    cluster.start_gateway()
    cluster.wait_replicas(2)
    jobs = _submit_many(cluster.urls, 240)
    stop = threading.Event()
    kills = 0

    def killer() -> None:
        nonlocal kills
        while not stop.wait(2.5):
            # Only replicas that are consuming: killing one still loading its model proves little.
            working = [r for r in cluster.live_replicas() if "consuming" in r.log_tail()]
            if working:
                random.choice(working).kill()  # SIGKILL, mid-inference more often than not
                kills += 1
                cluster.start_replica(**slow)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        finals = _wait_all(cluster.urls, [j for j, _ in jobs])
    finally:
        stop.set()
        thread.join()
    _assert_right(jobs, finals)
    starts = Counter(e.job_id for e in read_log(cluster.node.url) if e.status is JobStatus.STARTED)
    redelivered = sum(1 for n in starts.values() if n > 1)
    assert kills >= 3
    figure(f"240 jobs, {kills} replica SIGKILLs: lost 0, jobs redelivered {redelivered}")


def test_sigterm_during_inference_finishes_the_job(cluster: Cluster, figure: Figure) -> None:
    replica = cluster.start_replica(IMGQ_DEBUG_DELAY="3")
    _, url = cluster.start_gateway()
    cluster.wait_replicas(1)
    job = api.submit(url, MODEL, "coffee.jpg")
    started = api.get(url, f"/classifications/{job['job_id']}?wait=30&since=queued").json()
    assert started["status"] == "started"
    t0 = time.monotonic()
    replica.process.send_signal(signal.SIGTERM)
    final = api.wait_final(url, job["job_id"])
    code = replica.process.wait(30)
    drained = time.monotonic() - t0
    assert final["status"] == "succeeded"
    assert final["replica"] == replica.name
    assert code == 0
    assert queue_depths(cluster.node.url) == DRAINED
    starts = [e for e in read_log(cluster.node.url) if e.status is JobStatus.STARTED]
    assert len(starts) == 1, "the job must not have been requeued"
    figure(f"SIGTERM mid-inference: job completed and acked, replica exited 0 in {drained:.1f} s")


def test_a_job_past_the_time_limit_fails_and_the_replica_goes_on(
    cluster: Cluster, figure: Figure
) -> None:
    # Every inference takes 2 s here and the limit is 0.5 s: each job fails clearly, on time,
    # and the replica takes the next one instead of waiting for its stuck thread.
    replica = cluster.start_replica(IMGQ_DEBUG_DELAY="2", IMGQ_JOB_TIME_LIMIT="0.5")
    _, url = cluster.start_gateway()
    cluster.wait_replicas(1)
    t0 = time.monotonic()
    jobs = [api.submit(url, MODEL, image)["job_id"] for image in IMGQ_IMAGES_TWICE]
    finals = [api.wait_final(url, job_id, 30) for job_id in jobs]
    took = time.monotonic() - t0
    for final in finals:
        assert final["status"] == "failed", final
        assert final["error"]["code"] == "time_limit_exceeded"
        assert "0.5 s" in final["error"]["message"]
        # Failed at the limit, not after the 2 s its inference would have taken.
        assert final["finished_at"] - final["started_at"] < 2.0, final
    # Each next job started before the previous job's stuck thread could have finished.
    starts = sorted(final["started_at"] for final in finals)
    assert all(b - a < 2.0 for a, b in itertools.pairwise(starts)), starts
    assert replica.alive()
    assert queue_depths(cluster.node.url) == DRAINED
    figure(f"time limit 0.5 s, 2 s inferences: 4 jobs failed clearly in {took:.1f} s")


IMGQ_IMAGES_TWICE = ["cat.jpg", "coffee.jpg", "cat.jpg", "coffee.jpg"]


def test_poison_job_is_dead_lettered_and_others_flow(
    cluster: Cluster, figure: Figure, tmp_path: Path
) -> None:
    shutil.copy(api.REPO / "images" / "cat.jpg", tmp_path / "poison.jpg")
    shutil.copy(api.REPO / "images" / "cat.jpg", tmp_path / "cat.jpg")
    cluster.env["IMGQ_DEBUG_CRASH_IMAGE"] = "poison.jpg"
    for _ in range(2):
        cluster.start_replica()
    _, url = cluster.start_gateway(IMGQ_GALLERY_DIR=str(tmp_path))
    cluster.wait_replicas(2)
    # What a container's restart policy does: the same replica again, on the same filesystem
    # (its journal of the jobs it died running included).
    supervisor = Supervisor(cluster.stack)
    stop = threading.Event()
    thread = threading.Thread(target=_supervise, args=(supervisor, stop), daemon=True)
    thread.start()
    try:
        poison = api.submit(url, MODEL, "poison.jpg")
        good = [api.submit(url, MODEL, "cat.jpg") for _ in range(10)]
        failed = api.wait_final(url, poison["job_id"], timeout=240)
        finals = [api.wait_final(url, g["job_id"]) for g in good]
    finally:
        stop.set()
        thread.join()
    crashes = sum(supervisor.restarts.values())
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == "dead_lettered"
    counted = re.search(r"it crashed (\d+) replicas", failed["error"]["message"])
    assert counted is not None, failed["error"]
    assert int(counted[1]) >= CRASH_LIMIT
    assert all(f["status"] == "succeeded" for f in finals)
    assert crashes >= CRASH_LIMIT
    assert queue_depths(cluster.node.url)[DEAD_LETTER_QUEUE] == 1
    figure(
        f"poison job: {crashes} replica crashes, {counted[1]} counted, then dead-lettered and "
        "failed; 10/10 others ok"
    )


def _supervise(supervisor: Supervisor, stop: threading.Event) -> None:
    while not stop.wait(0.2):
        supervisor.check()


def test_bad_messages_between_jobs_are_dead_lettered_and_jobs_flow(
    cluster: Cluster, figure: Figure
) -> None:
    replica = cluster.start_replica()
    _, url = cluster.start_gateway()
    cluster.wait_replicas(1)
    bad = _bad_messages()
    stop = threading.Event()
    accepted: list[str] = []

    def load() -> None:
        while not stop.is_set():
            accepted.append(api.submit(url, MODEL, IMAGES[len(accepted) % 3])["job_id"])

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    try:
        asyncio.run(_publish_between(cluster.node.url, bad, accepted))
    finally:
        stop.set()
        thread.join()
    finals = _wait_all([url], accepted)
    assert all(f["status"] == "succeeded" for f in finals), Counter(f["status"] for f in finals)
    letters = asyncio.run(_read_dead_letters(cluster.node.url, len(bad)))
    reasons = {letter.body: letter.headers.get("dead_reason") for letter in letters}
    for message, expected in bad:
        reason = reasons.get(message.body)
        assert isinstance(reason, str), f"not dead-lettered with a reason: {message.body[:40]!r}"
        assert expected in reason, (expected, reason)
    assert replica.alive()
    assert "died" not in replica.log_tail(200_000)
    figure(
        f"{len(bad)} bad messages published straight to the work queue between "
        f"{len(accepted)} ordinary jobs: {len(accepted)} succeeded, {len(letters)} dead-lettered "
        "with their reason, the replica went on"
    )


def _bad_messages() -> list[tuple[aio_pika.Message, str]]:
    """Requests a broken or hostile producer could publish, each with what its reason says.
    Each body is distinct, to find its dead letter again."""
    good = wire.request_message(
        ClassifyRequest(new_job_id(), MODEL, "x.jpg", time.time(), image=b"x")
    )
    headers = dict(good.message.headers or {})

    def v2(tag: str, **changes: Any) -> aio_pika.Message:
        changed = {key: value for key, value in {**headers, **changes}.items() if value is not None}
        return aio_pika.Message(
            f"bad image {tag}".encode(), headers=changed, message_id=new_job_id()
        )

    def json_body(**fields: Any) -> aio_pika.Message:
        """A request in a shape the service never took (metadata and image in one JSON body)."""
        body = {"v": 1, "job_id": new_job_id(), "model": MODEL, "image_name": "x.jpg", **fields}
        return aio_pika.Message(orjson.dumps(body), message_id=body["job_id"])

    return [
        (v2("superscript", batch=f"{new_job_id()}/²/3"), "'batch' must be"),
        (v2("arabic-indic", batch=f"{new_job_id()}/١/٣"), "'batch' must be"),
        (v2("huge", queued_at_us=2**62), "queued_at_us"),
        (v2("table", model={"nested": {"deeper": [1, 2]}}), "'model' must be a string"),
        (v2("int model", model=7), "'model' must be a string"),
        (v2("no model", model=None), "'model' must be a non-empty string"),
        (v2("empty name", image_name=""), "'image_name'"),
        (v2("version 3", v=3), "schema version"),
        (aio_pika.Message(b"", headers=headers, message_id=new_job_id()), "empty"),
        # (aiormq gives every message it publishes a random message ID if it has none)
        (aio_pika.Message(b"bad image, bad id", headers=headers, message_id="../x"), "message_id"),
        (aio_pika.Message(b"\x00 no headers"), "schema version 2"),
        (aio_pika.Message(orjson.dumps({"v": [1], "tag": "list version"})), "schema version 2"),
        (json_body(image_b64="é non-ascii", queued_at=1.0), "schema version 2"),
        (v2("unknown model", model="no_such_model"), "unknown_model"),
    ]


async def _publish_between(
    broker_url: str, bad: list[tuple[aio_pika.Message, str]], accepted: list[str]
) -> None:
    """Each bad message straight into the work queue (default exchange), once more ordinary
    jobs were accepted, so that they land between them."""
    connection = await aio_pika.connect(broker_url)
    async with connection:
        channel = await connection.channel()
        for message, _ in bad:
            before = len(accepted)
            deadline = time.monotonic() + 60
            while len(accepted) < before + 2:
                assert time.monotonic() < deadline, "the load stopped"
                await asyncio.sleep(0.05)
            await channel.default_exchange.publish(message, WORK_QUEUE)


async def _read_dead_letters(
    broker_url: str, count: int
) -> list[aio_pika.abc.AbstractIncomingMessage]:
    """The first ``count`` dead letters (waiting for them as they come), left in the queue."""
    letters: list[aio_pika.abc.AbstractIncomingMessage] = []
    enough = asyncio.Event()
    connection = await aio_pika.connect(broker_url)
    async with connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=count + 10)
        queue = await channel.get_queue(DEAD_LETTER_QUEUE)

        async def on_message(message: Incoming) -> None:
            letters.append(message)
            if len(letters) >= count:
                enough.set()

        await queue.consume(on_message)
        await asyncio.wait_for(enough.wait(), 120)
    return letters


def test_inference_longer_than_two_heartbeats_keeps_the_connection(
    cluster: Cluster, figure: Figure
) -> None:
    # A 1 s heartbeat: a blocked event loop would miss it and the broker would drop us.
    replica = cluster.start_replica(
        IMGQ_DEBUG_DELAY="3.5", IMGQ_BROKER_URL=cluster.node.url + "?heartbeat=1"
    )
    _, url = cluster.start_gateway()
    cluster.wait_replicas(1)
    jobs = [api.submit(url, MODEL, "coffee.jpg") for _ in range(2)]
    finals = [api.wait_final(url, job["job_id"]) for job in jobs]
    assert all(f["status"] == "succeeded" for f in finals)
    starts = Counter(e.job_id for e in read_log(cluster.node.url) if e.status is JobStatus.STARTED)
    assert all(n == 1 for n in starts.values()), "a dropped connection would redeliver"
    log = replica.log_tail(100_000).lower()
    assert "reconnect" not in log
    assert "connection lost" not in log
    figure("3.5 s inferences with a 1 s heartbeat: connection kept, no redelivery")


def test_broker_restart_under_load(cluster: Cluster, figure: Figure) -> None:
    cluster.start_replica()
    cluster.start_replica()
    gateway, url = cluster.start_gateway()
    cluster.wait_replicas(2)
    stop = threading.Event()
    answers: list[tuple[int, float, str | None]] = []

    def load() -> None:
        i = 0
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                reply = api.post_json(
                    url,
                    "/classifications",
                    {"model": MODEL, "image": IMAGES[i % 3]},
                    {"Cache-Control": "no-cache"},
                )
                job_id = reply.json()["job_id"] if reply.status == 202 else None
                answers.append((reply.status, time.monotonic() - t0, job_id))
            except OSError:
                answers.append((0, time.monotonic() - t0, None))
            i += 1
            time.sleep(0.02)

    def accepted_count() -> int:
        return sum(1 for status, _, _ in answers if status == 202)

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    _wait_until(lambda: accepted_count() >= 30, "30 jobs accepted before the restart")
    down = time.monotonic()
    cluster.node.restart()
    up = time.monotonic()
    api_back = _wait_ready(url)
    cluster.wait_replicas(2, timeout=60)
    replicas_back = time.monotonic() - up
    # The load goes on through the recovery until jobs are accepted again.
    after = accepted_count()
    _wait_until(lambda: accepted_count() >= after + 30, "30 jobs accepted after the restart")
    stop.set()
    thread.join()

    statuses = Counter(status for status, _, _ in answers)
    assert set(statuses) <= {202, 503}, statuses
    assert statuses[503] > 0, "submissions during the outage should get 503"
    assert max(elapsed for _, elapsed, _ in answers) < 10, "no submission may hang"
    accepted = [job_id for status, _, job_id in answers if status == 202 and job_id]
    finals = _wait_all([url], accepted)
    assert all(f["status"] == "succeeded" for f in finals)
    # One full replay at start-up; after the reconnect it resumed where it stopped.
    follows = re.findall(r"following the event log from (\S+)", gateway.log_tail(1_000_000))
    assert follows[0] == "first"
    assert len(follows) >= 2
    assert all(offset.isdigit() for offset in follows[1:]), follows
    figure(
        f"broker restart ({up - down:.1f} s down) under load: {len(accepted)} accepted, lost 0, "
        f"{statuses[503]} got 503; gateway ready {api_back - up:.1f} s and replicas online "
        f"{replicas_back:.1f} s after the broker came back"
    )


def _wait_until(condition: Callable[[], bool], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout:g} s: {what}"
        time.sleep(0.05)


def test_five_broker_restarts_in_a_row_fail_no_job(cluster: Cluster, figure: Figure) -> None:
    """Each restart takes back the jobs the replicas hold, and the work queue counts one more
    delivery against each; returned jobs go back to the head of the queue, so the same ones are
    taken again.  Restarting the broker whenever both replicas hold jobs, five times, with
    submissions going on, used to push healthy jobs past the old delivery limit of 3.  Only a
    replica's crash counts now.

    A job takes 5 s, longer than a restart and the wait for both replicas to be busy again, so
    a job in hand never finishes between two restarts: the jobs at the head of the queue are
    started again after every one, on a fast machine as on a slow one."""
    for _ in range(2):
        cluster.start_replica(IMGQ_DEBUG_DELAY="5", IMGQ_BATCH_SIZE="1")
    _, url = cluster.start_gateway()
    cluster.wait_replicas(2)
    stop = threading.Event()
    accepted: list[str] = []

    def load() -> None:
        i = 0
        # Ten more while the broker comes and goes: enough to show submissions ride it out,
        # few enough that the 5 s jobs drain within a minute afterwards.
        while not stop.is_set() and i < 10:
            try:
                reply = api.post_json(
                    url,
                    "/classifications",
                    {"model": MODEL, "image": IMAGES[i % 3]},
                    {"Cache-Control": "no-cache"},
                )
                if reply.status == 202:
                    accepted.append(reply.json()["job_id"])
                    i += 1
                    stop.wait(1.0)  # a light load: the backlog stays short
                    continue
            except OSError:
                pass
            stop.wait(0.2)  # refused (the broker is down): retry, as a client would

    def both_busy_since(moment: float) -> bool:
        try:
            replicas = api.get(url, "/status", timeout=5).json()["replicas"]
        except (OSError, ValueError):
            return False
        return sum(r["busy"] and r["last_seen"] > moment for r in replicas) >= 2

    for _ in range(10):
        accepted.append(api.submit(url, MODEL, IMAGES[len(accepted) % 3])["job_id"])
    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    t0 = time.monotonic()
    try:
        for _ in range(5):
            moment = time.time()
            deadline = time.monotonic() + 120
            while not both_busy_since(moment):  # both hold a job: restart now
                assert time.monotonic() < deadline, "the replicas did not take jobs again"
                time.sleep(0.1)
            cluster.node.restart()
        span = time.monotonic() - t0
    finally:
        stop.set()
        thread.join()
    finals = _wait_all([url], accepted)
    statuses = Counter(f["status"] for f in finals)
    assert statuses == {"succeeded": len(accepted)}, statuses
    starts = Counter(e.job_id for e in read_log(cluster.node.url) if e.status is JobStatus.STARTED)
    redelivered = sum(1 for n in starts.values() if n > 1)
    # The scenario did what it is for: some job went back to the queue more than 3 times.
    assert max(starts.values()) > 3, starts.most_common(3)
    figure(
        f"5 broker restarts in {span:.0f} s, each while both replicas held a job: "
        f"{len(accepted)} accepted, 0 failed, 0 lost; {redelivered} jobs started more than "
        f"once, the most {max(starts.values())} times (the old limit failed a job at 4)"
    )


def _wait_ready(url: str, timeout: float = 60) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if api.get(url, "/readyz", timeout=2).status == 200:
                return time.monotonic()
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{url} not ready again within {timeout} s")


def test_restarted_gateway_serves_every_result_before_ready(
    cluster: Cluster, figure: Figure
) -> None:
    cluster.start_replica()
    cluster.start_replica()
    first, url = cluster.start_gateway()
    cluster.wait_replicas(2)
    jobs = _submit_many([url], 200)
    before = _wait_all([url], [j for j, _ in jobs])
    first.kill()
    t0 = time.monotonic()
    _, new_url = cluster.start_gateway(wait=False)
    _wait_ready(new_url)
    rebuild = time.monotonic() - t0
    for (job_id, _), old in zip(jobs, before, strict=True):
        assert api.get(new_url, f"/classifications/{job_id}").json() == old
    figure(
        f"gateway SIGKILLed and restarted: 200/200 results served, "
        f"ready {rebuild:.2f} s after start"
    )


def test_full_queue_answers_503_then_recovers(cluster: Cluster, figure: Figure) -> None:
    cluster.env["IMGQ_QUEUE_MAX_JOBS"] = "10"
    _, url = cluster.start_gateway()
    replies = [
        api.post_json(
            url,
            "/classifications",
            {"model": MODEL, "image": "cat.jpg"},
            {"Cache-Control": "no-cache"},
        )
        for _ in range(15)
    ]
    accepted = [r.json()["job_id"] for r in replies if r.status == 202]
    refused = [r for r in replies if r.status != 202]
    # A quorum queue checks its bound before enqueuing, so it can end one over.
    assert len(accepted) in (10, 11)
    assert len(refused) == 15 - len(accepted)
    for reply in refused:
        assert reply.status == 503
        assert reply.json()["code"] == "queue_full"
        assert int(reply.headers["retry-after"]) > 0
    queued = api.get(url, f"/classifications/{accepted[-1]}").json()
    assert queued["position"] == len(accepted)
    # A job's "queued" event goes out only once the broker confirmed the job: the refused
    # submissions left nothing in the log that another gateway would show as queued.
    # (Each is published just after its 202: wait until all of the accepted are there.)
    deadline = time.monotonic() + 30
    while not set(accepted) <= (logged := {event.job_id for event in read_log(cluster.node.url)}):
        assert time.monotonic() < deadline, set(accepted) - logged
    assert logged == set(accepted)
    cluster.start_replica()
    finals = _wait_all([url], accepted)
    assert all(f["status"] == "succeeded" for f in finals)
    assert (
        api.post_json(url, "/classifications", {"model": MODEL, "image": "cat.jpg"}).status == 202
    )
    figure(
        f"queue bound 10: {len(accepted)} accepted, {len(refused)} refused with 503 + "
        f"Retry-After; all {len(accepted)} finished once a replica started"
    )


def test_retention_gone_after_ttl_and_log_disk_bounded(cluster: Cluster, figure: Figure) -> None:
    cluster.env.update(
        IMGQ_JOB_TTL="2", IMGQ_LOG_MAX_BYTES="300000", IMGQ_LOG_SEGMENT_BYTES="60000"
    )
    cluster.start_replica()
    _, url = cluster.start_gateway()
    cluster.wait_replicas(1)
    job = api.submit(url, MODEL, "coffee.jpg")
    final = api.wait_final(url, job["job_id"])
    assert final["status"] == "succeeded"
    # Gone once its retention (IMGQ_JOB_TTL=2) has passed since it finished, and not before.
    deadline = time.monotonic() + 60
    while (gone := api.get(url, f"/classifications/{job['job_id']}")).status == 200:
        assert time.monotonic() < deadline, "the job outlived its retention"
        time.sleep(0.1)
    assert time.time() >= final["finished_at"] + 2
    assert gone.status == 410
    assert gone.json()["code"] == "job_gone"
    assert api.get(url, f"/classifications/{new_job_id()}").status == 404
    # A gateway started now knows the job from the log, and also answers 410.
    _, late = cluster.start_gateway()
    assert api.get(late, f"/classifications/{job['job_id']}").status == 410

    written = _flood_log(cluster.node.url, 4000)
    stream_dirs = [p for p in cluster.node.base_dir.rglob("__imgq_events_log_*") if p.is_dir()]
    assert stream_dirs, "stream data directory not found"
    # Retention runs when a segment rolls over, on the broker's own time: wait for it.
    bound = 300_000 + 3 * 60_000
    deadline = time.monotonic() + 60
    while (on_disk := sum(dir_size(p) for p in stream_dirs)) >= bound:
        assert time.monotonic() < deadline, f"the log holds {on_disk} B on disk, over {bound}"
        time.sleep(0.2)
    figure(
        f"retention: expired job 410, never-seen 404; log {written} B written, {on_disk} B on disk"
    )


def _flood_log(broker_url: str, count: int) -> int:
    import asyncio

    async def flood() -> int:
        connection = await aio_pika.connect(broker_url)
        written = 0
        async with connection:
            channel = await connection.channel()
            exchange = await channel.get_exchange(EVENTS_EXCHANGE)
            for _ in range(count):
                event = JobEvent(new_job_id(), JobStatus.FAILED, MODEL, "x.jpg", finished_at=1.0)
                body = event.to_json()
                written += len(body)
                await exchange.publish(aio_pika.Message(body), "job.failed")
        return written

    return asyncio.run(flood())


def _wait_known(url: str, job_id: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while api.get(url, f"/classifications/{job_id}").status != 200:
        assert time.monotonic() < deadline, f"{job_id} never reached {url}"
        time.sleep(0.01)


def test_idempotency_reuse_and_cancellation_across_gateways(
    cluster: Cluster, figure: Figure
) -> None:
    _, a = cluster.start_gateway()
    _, b = cluster.start_gateway()
    # No replica yet: jobs stay queued, so they can be cancelled.
    first = api.submit(a, MODEL, "coffee.jpg", key="order-1")
    # Gateways share keys through the event log: B knows the key once the event reached it.
    _wait_known(b, first["job_id"])
    again = api.post_json(
        b,
        "/classifications",
        {"model": MODEL, "image": "coffee.jpg"},
        {"Idempotency-Key": "order-1"},
    )
    assert again.status == 202
    assert again.json()["job_id"] == first["job_id"]
    assert again.headers["idempotent-replayed"] == "true"
    clash = api.post_json(
        b, "/classifications", {"model": MODEL, "image": "cat.jpg"}, {"Idempotency-Key": "order-1"}
    )
    assert clash.status == 422
    assert clash.json()["code"] == "idempotency_key_reused"

    doomed = api.submit(a, MODEL, "cat.jpg")
    _wait_known(b, doomed["job_id"])
    cancelled = api.request(b, "DELETE", f"/classifications/{doomed['job_id']}")
    assert cancelled.status == 200
    assert cancelled.json()["status"] == "cancelled"
    seen_on_a = api.get(a, f"/classifications/{doomed['job_id']}?wait=10&since=queued").json()
    assert seen_on_a["status"] == "cancelled"

    replica = cluster.start_replica()
    done = api.wait_final(b, first["job_id"])
    assert done["status"] == "succeeded"
    # The replica started after the cancellation and still skipped the job.
    assert api.wait_final(a, doomed["job_id"])["status"] == "cancelled"
    starts = {e.job_id for e in read_log(cluster.node.url) if e.status is JobStatus.STARTED}
    assert doomed["job_id"] not in starts
    assert "cancelled while queued" in replica.log_tail()

    reused = api.submit(b, MODEL, "coffee.jpg", reuse=True)
    assert reused["status"] == "succeeded"
    assert reused["reused_from"] == first["job_id"]
    assert reused["result"] == done["result"]

    assert api.request(b, "DELETE", f"/classifications/{first['job_id']}").status == 204
    deadline = time.monotonic() + 30
    while api.get(a, f"/classifications/{first['job_id']}").status != 410:
        assert time.monotonic() < deadline, "the deletion never reached gateway A"
        time.sleep(0.05)
    assert api.request(a, "DELETE", f"/classifications/{new_job_id()}").status == 404
    figure("idempotency key, result reuse, cancel and forget: consistent across 2 gateways")


def test_gateway_sigterm_answers_long_polls_and_exits(cluster: Cluster, figure: Figure) -> None:
    gateway, url = cluster.start_gateway()
    job = api.submit(url, MODEL, "cat.jpg")  # no replica: it stays queued
    answers: list[tuple[int, dict[str, Any], float]] = []

    def long_poll() -> None:
        t0 = time.monotonic()
        reply = api.get(url, f"/classifications/{job['job_id']}?wait=30")
        answers.append((reply.status, reply.json(), time.monotonic() - t0))

    polls = [threading.Thread(target=long_poll) for _ in range(5)]
    for poll in polls:
        poll.start()
    api.wait_long_polls(url, 5)
    t0 = time.monotonic()
    gateway.process.send_signal(signal.SIGTERM)
    code = gateway.process.wait(15)
    stopped = time.monotonic() - t0
    for poll in polls:
        poll.join(5)
    assert code == 0
    assert len(answers) == 5
    for status, body, waited in answers:
        assert status == 200
        assert body["status"] == "queued"
        assert waited < 10, "a pending long-poll must be answered at shutdown, not time out"
    # The job itself is safe in the queue for any other gateway and replica.
    assert queue_depths(cluster.node.url)[WORK_QUEUE] == 1
    figure(f"gateway SIGTERM: 5 pending long-polls answered, exited 0 in {stopped:.2f} s")


def test_deleted_queues_are_noticed_and_set_up_again(cluster: Cluster, figure: Figure) -> None:
    replica = cluster.start_replica()
    gateway, url = cluster.start_gateway()
    cluster.wait_replicas(1)
    assert api.wait_final(url, api.submit(url, MODEL, "cat.jpg")["job_id"])["status"] == "succeeded"

    async def delete_queues() -> None:
        connection = await aio_pika.connect(cluster.node.url)
        async with connection:
            channel = await connection.channel()
            await channel.queue_delete(EVENT_LOG)  # the gateway follows it
            await channel.queue_delete(WORK_QUEUE)  # the replica consumes it

    deleted = time.monotonic()
    asyncio.run(delete_queues())
    # Both notice their consumer was cancelled, start a new session and declare again.
    job_id = None
    while job_id is None:
        assert time.monotonic() - deleted < 60, gateway.log_tail()
        reply = api.post_json(
            url,
            "/classifications",
            {"model": MODEL, "image": "coffee.jpg"},
            {"Cache-Control": "no-cache"},
        )
        job_id = reply.json()["job_id"] if reply.status == 202 else None
        time.sleep(0.2)
    final = api.wait_final(url, job_id, 60)
    back = time.monotonic() - deleted
    assert final["status"] == "succeeded"
    assert api.get(url, "/readyz").status == 200
    for proc in (gateway, replica):
        assert "consumer was cancelled; reconnecting" in proc.log_tail(200_000), proc.name
    figure(f"event log and work queue deleted: both set up again, a job done {back:.1f} s after")
