"""The ``imgq`` library without a service: its core alone (scripted answers, milliseconds), and
its transports against a scripted socket (both clients against the real service:
tests/service/test_library.py)."""

from __future__ import annotations

import json
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

import imgq
from imgq import http_wire
from imgq.config import Retries, Timeouts
from imgq.core import Core, run_to_end
from imgq.errors import ApiError, TimedOut, Unreachable
from imgq.http_wire import EventParser, batch_submission
from imgq.many import BatchCreated, Plan
from imgq.steps import Call, Emit, ReadLine, Request, Response, Sleep
from imgq.types import Classification, Limits
from tests.client_calls import with_client
from tests.conftest import REPO

MODEL = "efficientnet_lite0"


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
            with_client(kind, url, lambda c: c.get("a" * 32), timeout=timeouts, max_retries=0)
        assert raised.value.phase == phase
        assert isinstance(raised.value, Unreachable)


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_unreachable_is_one_exception_for_both_clients(kind: str) -> None:
    with pytest.raises(Unreachable, match="connection refused") as raised:
        with_client(kind, "http://127.0.0.1:1", lambda c: c.get("ab" * 16), max_retries=0)
    assert raised.value.sent is False
    with pytest.raises(ValueError, match="not an http"):
        with_client(kind, "ftp://example.org", lambda c: c.get("ab" * 16))


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
