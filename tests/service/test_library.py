"""The ``imgq`` library's clients against the real service: retries after 429, 503, a dropped
connection and a gateway restart, idempotent resubmission, the event stream's resumption,
timeouts, and ``classify_many`` (its core and transports alone: tests/unit/test_library.py)."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import imgq
from compose.broker import INSTALL_HINT, BrokerNode, rabbitmq_installed, start_node
from compose.stack import ManagedProcess, Stack, wait_http_ok, wait_replicas_online
from imgq.config import Timeouts
from imgq.errors import ApiError, ImageReadError
from imgq.types import Classification
from tests import prometheus
from tests.client_calls import with_client
from tests.conftest import REPO, Service
from tests.noise_images import small_jpegs
from tests.relay import Relay, body_of

MODEL = "efficientnet_lite0"
COFFEE = REPO / "images" / "coffee.jpg"
EVENTS_ROUTE = "/classifications/{job_id}/events"


def test_sync_client_submits_waits_streams_and_cancels(service: Service) -> None:
    client = imgq.Client(service.base_url)
    assert MODEL in [m.name for m in client.models()]

    job = client.submit(MODEL, COFFEE, fresh=True)  # a path: uploaded
    assert job.image == "upload:coffee.jpg"
    assert job.model_version is None or isinstance(job.model_version, str)
    events = list(client.events(job.job_id))
    assert events[-1].is_final
    assert [e.status for e in events][-1] == "succeeded"
    done = client.wait(job.job_id)
    assert done.label is not None
    assert done.label.label == "espresso"

    batch = client.submit_batch(MODEL, ["cat.jpg", COFFEE, small_jpegs(1, seed=11)[0]])
    assert [j.image for j in batch.jobs] == ["cat.jpg", "upload:coffee.jpg", "upload:image"]
    finished = client.wait_batch(batch.batch_id)
    assert finished.done
    assert finished.counts["succeeded"] == 3
    assert finished.jobs[1].result is not None
    assert finished.jobs[1].result[0].label == "espresso"

    assert client.cancel(done.job_id) is None  # a finished job is forgotten
    with pytest.raises(imgq.ApiError) as gone:
        client.get(done.job_id)
    assert (gone.value.status, gone.value.code) == (410, "job_gone")
    assert gone.value.request_id
    with pytest.raises(imgq.ApiError) as refused:
        client.submit_batch(MODEL, ["cat.jpg", "nosuch.jpg"])
    assert refused.value.code == "unknown_image"
    assert refused.value.detail.startswith("images[1] (nosuch.jpg)")
    client.close()


def test_async_client_does_the_same(service: Service) -> None:
    async def scenario() -> None:
        async with imgq.AsyncClient(service.base_url) as client:
            assert MODEL in [m.name for m in await client.models()]
            job = await client.submit(MODEL, "coffee.jpg", fresh=True)
            statuses = [event.status async for event in client.events(job.job_id)]
            assert statuses[-1] == "succeeded"
            assert (await client.wait(job.job_id)).result is not None

            photos = small_jpegs(3, seed=12)
            batch = await client.submit_batch(MODEL, [("a.jpg", photos[0]), photos[1], "cat.jpg"])
            assert len(batch.jobs) == 3
            finished = await client.wait_batch(batch.batch_id)
            assert finished.counts["succeeded"] == 3
            assert [j.job_id for j in finished.jobs] == [j.job_id for j in batch.jobs]

            assert await client.cancel(job.job_id) is None
            with pytest.raises(imgq.ApiError) as gone:
                await client.get(job.job_id)
            assert gone.value.status == 410
            with pytest.raises(imgq.ApiError) as unknown:
                await client.get_batch("0" * 32)
            assert unknown.value.code == "batch_not_found"

    asyncio.run(scenario())


def test_the_same_run_id_returns_the_same_jobs(service: Service) -> None:
    photo = small_jpegs(1, seed=31)[0]
    with imgq.Client(service.base_url) as client:
        first = client.submit(MODEL, photo, run_id="run-31")
        assert client.submit(MODEL, photo, run_id="run-31").job_id == first.job_id
        assert client.submit(MODEL, photo, run_id="run-32").job_id != first.job_id
        # Without a run ID each call is a run of its own: a new job (here the earlier
        # result, reused), never the same one.
        assert client.submit(MODEL, photo).job_id != first.job_id
        images = [photo, "cat.jpg"]
        batch = client.submit_batch(MODEL, images, run_id="run-33")
        again = client.submit_batch(MODEL, images, run_id="run-33")
        assert [j.job_id for j in again.jobs] == [j.job_id for j in batch.jobs]


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_an_answer_lost_to_a_dropped_connection_is_asked_again_and_is_the_same_job(
    service: Service, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="imgq")
    port = urllib.parse.urlsplit(service.base_url).port
    assert port is not None
    relay = Relay(port)
    relay.start()
    try:
        relay.drop_next_answer()
        photo = small_jpegs(1, seed=41 if kind == "sync" else 42)[0]
        job = with_client(kind, relay.url, lambda c: c.submit(MODEL, photo))
    finally:
        relay.close()
    # The gateway accepted the first POST (its answer is what the relay kept back); the
    # retry, with the same Idempotency-Key, got that job, not a second one.
    [lost] = relay.dropped
    assert lost.startswith(b"HTTP/1.1 202")
    assert job.job_id == json.loads(body_of(lost))["job_id"]
    assert any("trying again" in r.getMessage() for r in caplog.records)


def test_429_is_retried_after_retry_after(
    service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="imgq")
    proc, url = service.stack.start_gateway(env={"IMGQ_CLIENT_RATE": "1", "IMGQ_CLIENT_BURST": "1"})
    try:
        wait_http_ok(f"{url}/readyz", 60, proc)
        with imgq.Client(url, max_retries=0) as strict:
            strict.submit(MODEL, "cat.jpg")  # the burst
            with pytest.raises(ApiError) as refused:
                strict.submit(MODEL, "camera.jpg")
        error = refused.value
        assert (error.status, error.code) == (429, "too_many_requests")
        retry_after = float(error.headers["retry-after"])
        assert retry_after >= 1
        assert error.request_id

        with imgq.Client(url) as client:
            started = time.monotonic()
            job = client.submit(MODEL, "coffee.jpg")
            waited = time.monotonic() - started
    finally:
        proc.terminate()
    assert job.model == MODEL
    # Retry-After is the least it waited before asking again.
    assert waited >= retry_after
    assert any("429 too_many_requests" in r.getMessage() for r in caplog.records)


@dataclass
class Lab:
    node: BrokerNode
    stack: Stack
    gateway: ManagedProcess
    url: str
    replica: ManagedProcess

    @contextmanager
    def held(self) -> Iterator[None]:
        """The replica is stopped (SIGSTOP): jobs wait, queued, until the block ends."""
        self.replica.process.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            self.replica.process.send_signal(signal.SIGCONT)

    def metrics(self) -> prometheus.Exposition:
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=10) as response:
            return prometheus.parse(response.read().decode())

    def restart_gateway(self) -> None:
        self.gateway.kill()  # SIGKILL: its connections drop mid-request
        self.gateway = self.stack.respawn(self.gateway)
        wait_http_ok(f"{self.url}/readyz", 60, self.gateway)


@pytest.fixture(scope="module")
def lab(log_dir: Path) -> Iterator[Lab]:
    if not rabbitmq_installed():
        pytest.fail(f"these tests run a real RabbitMQ node; {INSTALL_HINT}")
    node = start_node()
    logs = log_dir / "library"
    logs.mkdir(parents=True, exist_ok=True)
    stack = Stack(node.url, logs)
    env = {"IMGQ_MODELS": MODEL}
    try:
        # Event streams end after 1 s (the least allowed): the client has to resume them.
        gateway, url = stack.start_gateway(env={**env, "IMGQ_STREAM_SECONDS": "1"})
        replica = stack.start_replica("lab-replica", env={**env, "IMGQ_HEARTBEAT_INTERVAL": "0.5"})
        wait_http_ok(f"{url}/readyz", 60, gateway)
        wait_replicas_online(url, 1, 180)
        yield Lab(node, stack, gateway, url, replica)
    finally:
        stack.stop(timeout=15)
        node.stop()


def poll_until(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        time.sleep(0.05)


class Background(threading.Thread):
    """Runs ``fn`` on a thread and keeps its result or its exception."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self.fn = fn
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.fn()
        except BaseException as exc:
            self.error = exc

    def outcome(self, timeout: float = 120) -> Any:
        self.join(timeout)
        assert not self.is_alive(), "still running"
        if self.error is not None:
            raise self.error
        return self.result


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_events_resume_when_the_stream_ends_before_the_job_is_final(lab: Lab, kind: str) -> None:
    photo = small_jpegs(1, seed=51 if kind == "sync" else 52)[0]

    def follow(client: Any) -> Any:
        if kind == "sync":
            return [e.status for e in client.events(job.job_id)]

        async def statuses() -> list[str]:
            return [e.status async for e in client.events(job.job_id)]

        return statuses()

    ended = prometheus.Exposition.value
    with lab.held():
        job = imgq.Client(lab.url).submit(MODEL, photo)
        before = ended(lab.metrics(), "imgq_http_requests_total", route=EVENTS_ROUTE,
                       method="GET", status="200")  # fmt: skip
        watcher = Background(lambda: with_client(kind, lab.url, follow))
        watcher.start()
        # Two streams have ended at the gateway's lifetime, the job still queued: the client
        # has opened a third at least.
        poll_until(
            lambda: ended(lab.metrics(), "imgq_http_requests_total", route=EVENTS_ROUTE,
                          method="GET", status="200") >= before + 2,
            "two event streams ended",
        )  # fmt: skip
    statuses = watcher.outcome()
    assert statuses[0] == "queued"
    assert statuses[-1] == "succeeded"
    assert len(statuses) == len(set(statuses)), statuses  # each status once, however resumed


def test_long_polls_and_streams_ride_out_a_gateway_restart(
    lab: Lab, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="imgq")
    photo = small_jpegs(1, seed=61)[0]
    with lab.held():
        job = imgq.Client(lab.url).submit(MODEL, photo)
        waiter = Background(lambda: imgq.Client(lab.url).wait(job.job_id, timeout=180))
        streamer = Background(lambda: [e.status for e in imgq.Client(lab.url).events(job.job_id)])
        waiter.start()
        streamer.start()
        poll_until(
            lambda: lab.metrics().value("imgq_long_polls_waiting") >= 2,
            "the long-poll and the stream held by the gateway",
        )
        lab.restart_gateway()
    assert waiter.outcome().status == "succeeded"
    statuses = streamer.outcome()
    assert (statuses[0], statuses[-1]) == ("queued", "succeeded")
    assert len(statuses) == len(set(statuses))
    messages = [r.getMessage() for r in caplog.records]
    assert any("trying again" in m for m in messages), messages
    assert any("resuming" in m for m in messages), messages


def test_503_is_retried_until_the_gateway_can_take_the_job(
    lab: Lab, caplog: pytest.LogCaptureFixture
) -> None:
    """A gateway whose broker is out of reach answers 503 (with Retry-After); the client asks
    again until the broker is back and the job is accepted."""
    caplog.set_level(logging.INFO, logger="imgq")
    relay = Relay(lab.node.amqp_port)  # not listening yet: the gateway finds no broker
    proc, url = lab.stack.start_gateway(
        env={"IMGQ_MODELS": MODEL, "IMGQ_BROKER_URL": f"amqp://guest:guest@127.0.0.1:{relay.port}/"}
    )
    try:
        wait_http_ok(f"{url}/healthz", 60, proc)
        submitter = Background(lambda: imgq.Client(url).submit(MODEL, "cat.jpg", fresh=True))
        submitter.start()
        poll_until(
            lambda: any("503 not_ready" in r.getMessage() for r in caplog.records),
            "a 503 answered and retried",
        )
        relay.start()
        job = submitter.outcome()
    finally:
        proc.terminate()
        relay.close()
    assert job.image == "cat.jpg"
    assert imgq.Client(lab.url).wait(job.job_id, timeout=120).status == "succeeded"


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_long_poll_is_not_cut_short_by_the_timeouts(lab: Lab, kind: str) -> None:
    short = Timeouts(connect=5, read=1.0, total=2.0)
    with lab.held():
        job = imgq.Client(lab.url).submit(MODEL, small_jpegs(1, seed=71)[0])
        # Held by the server for 3 s, past both the read and the total timeout.
        polled = with_client(
            kind, lab.url, lambda c: c.get(job.job_id, wait=3), timeout=short, max_retries=0
        )
    assert polled.status == "queued"


def _many_images(tmp_path: Path, seed: int) -> tuple[list[Any], dict[str, int]]:
    """Files, bytes, named bytes and gallery names; one unknown name, one missing file."""
    photos = small_jpegs(20, seed=seed)
    paths = []
    for i, data in enumerate(photos[:10]):
        path = tmp_path / f"photo-{i}.jpg"
        path.write_bytes(data)
        paths.append(path)
    images: list[Any] = [*paths[:5], "cat.jpg", *photos[10:15], "nosuch.jpg"]
    images += [("named.jpg", photos[15]), tmp_path / "missing.jpg", *paths[5:], photos[16]]
    where = {
        "nosuch": images.index("nosuch.jpg"),
        "missing": images.index(tmp_path / "missing.jpg"),
    }
    return images, where


def _check_many(results: list[Classification], images: list[Any], where: dict[str, int]) -> None:
    assert sorted(r.index for r in results) == list(range(len(images)))
    by_index = {r.index: r for r in results}
    refused = by_index[where["nosuch"]]
    assert refused.job is None
    assert isinstance(refused.error, ApiError)
    assert refused.error.code == "unknown_image"
    assert not refused.error.detail.startswith("images[")
    unread = by_index[where["missing"]]
    assert isinstance(unread.error, ImageReadError)
    others = [r for i, r in by_index.items() if i not in where.values()]
    assert all(r.ok for r in others), [(r.name, r.status, r.error) for r in others if not r.ok]
    assert by_index[images.index("cat.jpg")].job.image == "cat.jpg"  # type: ignore[union-attr]


def test_classify_many_sync(service: Service, tmp_path: Path) -> None:
    images, where = _many_images(tmp_path, seed=81)
    batches: list[imgq.Batch] = []
    with imgq.Client(service.base_url) as client:
        results = list(
            client.classify_many(
                images, MODEL, batch_size=4, max_in_flight=8, on_batch=batches.append
            )
        )
    _check_many(results, images, where)
    assert len(batches) >= 5  # 20 images, 4 a batch
    assert all(len(b.jobs) <= 4 for b in batches)


def test_classify_many_async(service: Service, tmp_path: Path) -> None:
    images, where = _many_images(tmp_path, seed=82)

    async def scenario() -> list[Classification]:
        async with imgq.AsyncClient(service.base_url) as client:
            return [r async for r in client.classify_many(images, MODEL, batch_size=4)]

    _check_many(asyncio.run(scenario()), images, where)


def test_classify_many_stops_on_a_refusal_that_concerns_every_image(service: Service) -> None:
    with imgq.Client(service.base_url) as client, pytest.raises(ApiError) as refused:
        list(client.classify_many(["cat.jpg", "coffee.jpg"], "resnet9000"))
    assert refused.value.code == "unknown_model"
