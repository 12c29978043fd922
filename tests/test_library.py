"""The ``imgq`` library: its core alone (scripted answers, milliseconds), its transports
against a scripted socket, and both clients against the real service: retries after 429,
503, a dropped connection and a gateway restart, idempotent resubmission, the event
stream's resumption, timeouts, and ``classify_many``."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import signal
import socket
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
from imgq import http_wire
from imgq.config import Retries, Timeouts
from imgq.core import Core, run_to_end
from imgq.errors import ApiError, ImageReadError, TimedOut, Unreachable
from imgq.http_wire import EventParser, batch_submission
from imgq.many import BatchCreated, Plan
from imgq.steps import Call, Emit, ReadLine, Request, Response, Sleep
from imgq.types import Classification, Limits
from tests import prometheus
from tests.conftest import REPO, Service
from tests.relay import Relay, body_of
from tests.test_batches import small_jpegs

MODEL = "efficientnet_lite0"
COFFEE = REPO / "images" / "coffee.jpg"
EVENTS_ROUTE = "/classifications/{job_id}/events"


# -- the core alone: scripted answers -------------------------------------------------------


def _core(**retries: Any) -> Core:
    policy = Retries(**{"initial_delay": 0.01, "max_delay": 0.02, **retries})
    return Core("http://gateway.test", None, Timeouts(), policy, rng=random.Random(7))


def _answer(status: int, body: Any = None, headers: dict[str, str] | None = None) -> Response:
    raw = b"" if body is None else json.dumps(body).encode()
    kind = "application/json" if status < 400 else "application/problem+json"
    return Response(status, "", {"content-type": kind, **(headers or {})}, raw, "rid")


def _problem(status: int, code: str, detail: str = "no", **headers: str) -> Response:
    return _answer(status, {"code": code, "detail": detail}, headers)


def _job(job_id: str, status: str = "queued", image: str = "x") -> dict[str, Any]:
    return {"job_id": job_id, "status": status, "model": MODEL, "image": image}


class Script:
    """Answers each request with the next answer its handler gives, and records the steps."""

    def __init__(self, handler: Callable[[Request], Response | BaseException]) -> None:
        self.handler = handler
        self.requests: list[Request] = []
        self.slept: list[float] = []
        self.emitted: list[Any] = []

    def __call__(self, step: Any) -> Any:
        if isinstance(step, Request):
            self.requests.append(step)
            answer = self.handler(step)
            if isinstance(answer, BaseException):
                raise answer
            return answer
        if isinstance(step, Sleep):
            self.slept.append(step.seconds)
            return None
        if isinstance(step, Call):
            return step.fn()
        if isinstance(step, Emit):
            self.emitted.append(step.value)
            return None
        raise AssertionError(f"unexpected step {step!r}")


def test_refusals_for_now_are_retried_after_retry_after_or_backoff() -> None:
    answers = iter(
        [
            _problem(429, "too_many_requests", **{"retry-after": "3"}),
            _problem(503, "queue_full"),
            Unreachable("http://gateway.test", "connection refused", sent=False),
            _answer(200, _job("a" * 32, "succeeded")),
        ]
    )
    script = Script(lambda _: next(answers))
    core = _core()
    job = run_to_end(core.get("a" * 32), script)
    assert job.status == "succeeded"
    # Retry-After honoured (never sooner, a little later at random), then backoff.
    assert 3.0 <= script.slept[0] <= 3.6
    assert len(script.slept) == 3
    # One request ID for all the tries of one call.
    assert len({r.headers["X-Request-ID"] for r in script.requests}) == 1


def test_what_is_not_safe_to_repeat_is_not_repeated() -> None:
    core = _core()
    delete = core.request("DELETE", "/classifications/x")
    post = core.request("POST", "/classifications")  # no Idempotency-Key
    keyed = core.request("POST", "/batches", headers={"Idempotency-Key": "k"})
    dropped = Unreachable("u", "dropped", sent=True)
    refused = Unreachable("u", "refused", sent=False)
    assert core.retry_delay(delete, dropped, 0) is None
    assert core.retry_delay(delete, refused, 0) is not None
    assert core.retry_delay(post, dropped, 0) is None
    assert core.retry_delay(keyed, dropped, 0) is not None
    assert core.retry_delay(keyed, TimedOut("u", "read", 1), 0) is not None
    bad_gateway = ApiError(502, "http_error", "Bad Gateway")
    assert core.retry_delay(post, bad_gateway, 0) is None
    assert core.retry_delay(keyed, bad_gateway, 0) is not None
    assert core.retry_delay(keyed, ApiError(422, "unknown_image", "no"), 0) is None
    # A Retry-After beyond what the policy waits is an answer, not a promise.
    far = ApiError(429, "too_many_requests", "later", headers={"retry-after": "3600"})
    assert core.retry_delay(keyed, far, 0) is None
    assert core.retry_delay(keyed, refused, core.retries.max_retries) is None


def test_backoff_doubles_up_to_its_ceiling_with_jitter() -> None:
    policy = Retries(initial_delay=0.5, max_delay=8.0)
    rng = random.Random(1)
    for attempt, ceiling in enumerate([0.5, 1, 2, 4, 8, 8, 8]):
        delay = policy.backoff(attempt, rng)
        assert ceiling / 2 <= delay <= ceiling


def test_timeouts_of_a_long_poll_include_its_wait() -> None:
    base = Timeouts(connect=1, read=2, total=3)
    assert base.holding(30) == Timeouts(1, 32, 33)
    assert Timeouts.of(5, base) == Timeouts(5, 5, 5)
    assert Timeouts.of(None, base) is base
    with pytest.raises(ValueError, match="positive"):
        Timeouts(connect=0)
    request = _core().request("GET", "/x", timeouts=base, hold=30)
    assert (request.timeouts.read, request.timeouts.total) == (32, 33)
    stream = _core().request("GET", "/e", timeouts=base, stream=True)
    assert stream.timeouts.read >= 20  # above the server's keep-alive interval


def test_an_error_keeps_status_code_headers_and_request_id() -> None:
    script = Script(lambda _: _problem(404, "job_not_found", "unknown job", **{"x-extra": "1"}))
    with pytest.raises(ApiError) as raised:
        run_to_end(_core().get("b" * 32), script)
    error = raised.value
    assert (error.status, error.code, error.detail) == (404, "job_not_found", "unknown job")
    assert error.headers["x-extra"] == "1"
    assert error.request_id == "rid"


def test_idempotency_keys_follow_run_model_and_content() -> None:
    key = http_wire.idempotency_key
    cat, dog = http_wire.digest(http_wire.Upload("file", "a", b"cat")), http_wire.digest("dog")
    assert key("r", MODEL, [cat]) == key("r", MODEL, [cat])
    assert len({key("r", MODEL, [cat]), key("s", MODEL, [cat]), key("r", "m2", [cat])}) == 3
    assert key("r", MODEL, [cat]) != key("r", MODEL, [dog])
    assert len(key("r", MODEL, [cat, dog])) <= 250  # room for the gateway's '#<index>'


def test_events_resume_with_last_event_id_and_show_each_status_once() -> None:
    streams = iter(
        [
            [b"event: job\n", b"id: queued\n",
             b'data: {"job_id": "j", "status": "queued"}\n', b"\n"],
            # The server's stream lifetime ended the first: it sends the job as it is again.
            [b": keep-alive\n", b"\n", b"event: job\n", b"id: queued\n",
             b'data: {"job_id": "j", "status": "queued"}\n', b"\n",
             b"event: job\n", b"id: started\n", b'data: {"job_id": "j", "status": "started"}\n',
             b"\n"],
            [b"event: job\n", b"id: succeeded\n",
             b'data: {"job_id": "j", "status": "succeeded"}\n', b"\n", b"never read\n"],
        ]
    )  # fmt: skip
    lines: list[bytes] = []
    requests: list[Request] = []
    emitted: list[str] = []

    def perform(step: Any) -> Any:
        if isinstance(step, Request):
            requests.append(step)
            lines[:] = next(streams)
            return Response(200, "OK", {}, b"", "rid")
        if isinstance(step, ReadLine):
            return lines.pop(0) if lines else b""
        if isinstance(step, Emit):
            emitted.append(step.value.status)
        return None

    run_to_end(_core().events("j"), perform)
    assert emitted == ["queued", "started", "succeeded"]
    assert [r.headers.get("Last-Event-ID") for r in requests] == [None, "queued", "started"]


def test_classify_many_plan_refusals_fallbacks_and_rollbacks() -> None:
    """A refused image is reported and the rest go again under a new key; jobs that come back
    cancelled (an earlier try rolled back) are submitted anew; a gateway without /batches
    gets one request per image."""
    keys: list[str] = []
    posted: list[int] = []

    def gateway(request: Request) -> Response:
        path = request.path.split("?")[0]
        if request.method == "POST" and path == "/batches":
            keys.append(request.headers["Idempotency-Key"])
            names = json.loads(request.body or b"")["images"]
            posted.append(len(names))
            if "bad" in names:
                return _problem(422, "unknown_image", f"images[{names.index('bad')}] (bad): no")
            if names == ["p", "q"]:
                return _problem(404, "not_found", "Not Found: /batches")
            status = "cancelled" if names[0] == "rolled" and len(keys) < 4 else "succeeded"
            jobs = [_job(f"{n}-{len(keys)}", status, n) for n in names]
            return _answer(202, {"batch_id": "b" * 32, "jobs": jobs, "done": True})
        if request.method == "POST":
            name = json.loads(request.body or b"")["image"]
            return _answer(202, _job(f"{name}-single", "succeeded", name))
        raise AssertionError(request)

    plan = Plan.make(MODEL, Limits(), run_id="run", batch_size=3)
    script = Script(gateway)
    outcomes: list[Classification] = []
    for chunk in plan.chunks(["a", "bad", "c", "rolled", "r2", "r3", "p", "q"]):
        run_to_end(plan.classify(_core(), chunk), script)
    outcomes = [v for v in script.emitted if isinstance(v, Classification)]
    by_name = {o.name: o for o in outcomes}
    assert sorted(by_name) == ["a", "bad", "c", "p", "q", "r2", "r3", "rolled"]
    assert len(outcomes) == 8
    refused = by_name["bad"]
    assert refused.job is None
    assert isinstance(refused.error, ApiError)
    assert refused.error.detail == "no"  # not "images[1] (bad): no": the batch is ours
    assert all(o.ok for name, o in by_name.items() if name != "bad")
    # The rolled-back jobs went again under keys of their own.
    assert len(set(keys)) == len(keys)
    assert by_name["p"].job is not None
    assert by_name["p"].job.job_id == "p-single"
    assert sum(isinstance(v, BatchCreated) for v in script.emitted) >= 3


def test_chunks_hold_at_most_the_images_and_bytes_a_batch_may() -> None:
    plan = Plan.make(MODEL, Limits(batch_max_images=4, batch_max_bytes=200_000), run_id="r")
    images = [b"x" * 60_000] * 5 + ["name"] * 6
    chunks = list(plan.chunks(images))
    # Three of 60 kB would pass 200 kB with the framing; then the count is the limit.
    assert [len(c) for c in chunks] == [2, 2, 4, 3]
    assert [i.index for c in chunks for i in c] == list(range(11))
    assert Plan.make(MODEL, Limits(), run_id="r", max_in_flight=100).parallel == 1
    assert Plan.make(MODEL, Limits(), run_id="r", max_in_flight=256).parallel == 4


def test_event_parser_skips_comments_and_other_events() -> None:
    parser = EventParser()
    lines = [": keep-alive", "", "event: other", "data: {}", "", "event: job", "id: queued"]
    assert [parser.feed(line) for line in lines] == [None] * len(lines)
    assert parser.feed('data: {"job_id": "x", "status": "queued"}') is None
    assert parser.feed("") == {"job_id": "x", "status": "queued"}
    assert parser.last_id == "queued"


def test_a_batch_of_names_is_json_and_one_with_files_is_a_form(tmp_path: Path) -> None:
    content_type, body = batch_submission(MODEL, ["cat.jpg", "coffee.jpg"])
    assert (content_type, body) == (
        "application/json",
        b'{"model": "efficientnet_lite0", "images": ["cat.jpg", "coffee.jpg"]}',
    )
    photo = tmp_path / "p.png"
    photo.write_bytes(b"\x89PNG")
    content_type, body = batch_submission(MODEL, ["cat.jpg", photo])
    assert content_type.startswith("multipart/form-data; boundary=")
    # In order: the model, then the gallery name, then the file.
    assert (
        body.index(b'name="model"') < body.index(b'name="image"') < body.index(b'filename="p.png"')
    )
    assert b"Content-Type: image/png" in body


def test_a_callback_url_goes_in_the_body_as_the_server_reads_it(tmp_path: Path) -> None:
    url = "https://receiver.example/imgq"
    _, body = http_wire.submission(MODEL, "cat.jpg", url)
    assert json.loads(body) == {"model": MODEL, "image": "cat.jpg", "callback_url": url}
    _, body = http_wire.read_batch(MODEL, ["cat.jpg"], url)
    assert json.loads(body)["callback_url"] == url
    photo = tmp_path / "p.png"
    photo.write_bytes(b"\x89PNG")
    upload = http_wire.name_or_upload(photo)
    assert not isinstance(upload, str)
    _, form = http_wire.submission(MODEL, upload, url)
    assert b'name="callback_url"' in form
    assert url.encode() in form
    # Without one, nothing is said.
    assert b"callback_url" not in http_wire.submission(MODEL, "cat.jpg")[1]


def test_the_webhook_helpers_check_what_the_gateway_signs() -> None:
    from gateway.webhook_signing import secret_for_token as gateways_secret
    from gateway.webhook_signing import signature

    assert imgq.webhooks.secret_for_token("alice") == gateways_secret("alice")
    header = signature("s" * 32, 1_800_000_000, b"{}")
    assert imgq.webhooks.verify("s" * 32, header, b"{}", now=1_800_000_000)
    assert not imgq.webhooks.verify("s" * 32, header, b"{ }", now=1_800_000_000)


def test_retry_after_reads_seconds_and_dates() -> None:
    assert http_wire.retry_after({"retry-after": "2"}) == 2.0
    assert http_wire.retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0) > 0
    assert http_wire.retry_after({}) is None


# -- the transports against a scripted socket ------------------------------------------------


@contextmanager
def scripted_server(answer: Callable[[socket.socket], None]) -> Iterator[str]:
    """A server that reads each request's first bytes and then does ``answer`` with it."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.recv(65536)
            threading.Thread(target=answer, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        listener.close()


def _silent(conn: socket.socket) -> None:
    time.sleep(10)  # never answers (the test's read timeout is far shorter)
    conn.close()


def _trickle(conn: socket.socket) -> None:
    # An answer that keeps coming, a byte at a time: never silent, never done.
    conn.sendall(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 999\r\n\r\n"
    )
    try:
        for _ in range(100):
            conn.sendall(b" ")
            time.sleep(0.05)
    except OSError:
        pass
    conn.close()


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_read_and_total_timeouts_are_their_own_error(kind: str) -> None:
    # The trickle's gaps (0.05 s) are a twentieth of the read timeout; it lasts twice the total.
    timeouts = Timeouts(connect=5, read=1.0, total=2.5)
    for answer, phase in ((_silent, "read"), (_trickle, "total")):
        with scripted_server(answer) as url, pytest.raises(TimedOut) as raised:
            _call(kind, url, lambda c: c.get("a" * 32), timeout=timeouts, max_retries=0)
        assert raised.value.phase == phase
        assert isinstance(raised.value, Unreachable)


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_unreachable_is_one_exception_for_both_clients(kind: str) -> None:
    with pytest.raises(Unreachable, match="connection refused") as raised:
        _call(kind, "http://127.0.0.1:1", lambda c: c.get("ab" * 16), max_retries=0)
    assert raised.value.sent is False
    with pytest.raises(ValueError, match="not an http"):
        _call(kind, "ftp://example.org", lambda c: c.get("ab" * 16))


def test_import_imgq_does_not_import_aiohttp() -> None:
    import subprocess
    import sys

    probe = "import sys, imgq; print('aiohttp' in sys.modules); imgq.AsyncClient; "
    probe += "print('aiohttp' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={"PYTHONPATH": str(REPO / "client" / "src")},
    )
    assert done.stdout.split() == ["False", "True"]


def _call(kind: str, url: str, call: Callable[[Any], Any], **options: Any) -> Any:
    """``call(client)`` with a sync client, or awaited with an async one."""
    if kind == "sync":
        with imgq.Client(url, **options) as client:
            return call(client)

    async def scenario() -> Any:
        async with imgq.AsyncClient(url, **options) as client:
            return await call(client)

    return asyncio.run(scenario())


# -- against the real service ---------------------------------------------------------------


@pytest.mark.broker
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


@pytest.mark.broker
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


@pytest.mark.broker
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


@pytest.mark.broker
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
        job = _call(kind, relay.url, lambda c: c.submit(MODEL, photo))
    finally:
        relay.close()
    # The gateway accepted the first POST (its answer is what the relay kept back); the
    # retry, with the same Idempotency-Key, got that job, not a second one.
    [lost] = relay.dropped
    assert lost.startswith(b"HTTP/1.1 202")
    assert job.job_id == json.loads(body_of(lost))["job_id"]
    assert any("trying again" in r.getMessage() for r in caplog.records)


@pytest.mark.broker
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


# -- a deployment of the module's own, whose replica can be held and gateway restarted ------


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


@pytest.mark.broker
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
        watcher = Background(lambda: _call(kind, lab.url, follow))
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


@pytest.mark.broker
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


@pytest.mark.broker
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


@pytest.mark.broker
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_long_poll_is_not_cut_short_by_the_timeouts(lab: Lab, kind: str) -> None:
    short = Timeouts(connect=5, read=1.0, total=2.0)
    with lab.held():
        job = imgq.Client(lab.url).submit(MODEL, small_jpegs(1, seed=71)[0])
        # Held by the server for 3 s, past both the read and the total timeout.
        polled = _call(
            kind, lab.url, lambda c: c.get(job.job_id, wait=3), timeout=short, max_retries=0
        )
    assert polled.status == "queued"


# -- classify_many against the real service -------------------------------------------------


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


@pytest.mark.broker
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


@pytest.mark.broker
def test_classify_many_async(service: Service, tmp_path: Path) -> None:
    images, where = _many_images(tmp_path, seed=82)

    async def scenario() -> list[Classification]:
        async with imgq.AsyncClient(service.base_url) as client:
            return [r async for r in client.classify_many(images, MODEL, batch_size=4)]

    _check_many(asyncio.run(scenario()), images, where)


@pytest.mark.broker
def test_classify_many_stops_on_a_refusal_that_concerns_every_image(service: Service) -> None:
    with imgq.Client(service.base_url) as client, pytest.raises(ApiError) as refused:
        list(client.classify_many(["cat.jpg", "coffee.jpg"], "resnet9000"))
    assert refused.value.code == "unknown_model"
