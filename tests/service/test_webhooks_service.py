"""Callbacks on the real service: a broker node of their own, one replica, two gateways, and a
receiver in the test process on loopback (the gateways allow loopback, as an operator would
allow an internal network; nothing else of theirs is reachable).

- a job's callback: once, signed with the client's secret, the job as GET answers it;
- a receiver that fails twice: the same delivery again after each delay, then delivered;
- one that never answers 2xx: given up after the last attempt;
- private, link-local and non-http addresses: refused at submission (422), nothing queued;
- many jobs through both gateways: each callback delivered once;
- a batch: one callback once all its jobs are final, none per job;
- the gateway making an attempt killed mid-attempt: the other delivers, the killed one is
  restarted, and the receiver has exactly one delivery (two attempts, one ID);
- the gateway making an attempt stopped (SIGTERM) mid-attempt: it finishes the attempt
  before it exits, and there is no second.

The retry delays are short here (``IMGQ_WEBHOOK_RETRY_DELAYS``); the schedule's arithmetic is
tested without a broker in tests/unit/test_webhooks.py.
"""

from __future__ import annotations

import itertools
import os
import signal
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from compose.broker import start_node
from compose.stack import ManagedProcess, Stack, wait_http_ok
from gateway.webhook_signing import secret_for_token, verify
from tests import api
from tests.callback_receiver import CallbackReceiver, Received
from tests.cluster import MODEL, Cluster
from tests.openapi_contract import assert_response_matches
from tests.prometheus import parse

pytestmark = pytest.mark.timeout(300)

TOKEN = "alice-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SECRET = secret_for_token(TOKEN)
# Two retries, three attempts in all: short, so that the retry tests take a second or two.
DELAYS = (0.3, 0.6)


@dataclass
class Deployment:
    cluster: Cluster
    receiver: CallbackReceiver

    @property
    def urls(self) -> list[str]:
        return self.cluster.urls


@pytest.fixture(scope="module")
def deployment(log_dir: Path) -> Iterator[Deployment]:
    node = start_node()
    logs = log_dir / "webhooks"
    logs.mkdir(parents=True, exist_ok=True)
    stack = Stack(node.url, logs)
    env = {
        "IMGQ_API_TOKENS": TOKEN,
        # Loopback, where the receiver is: IPv4 and IPv6.
        "IMGQ_WEBHOOK_ALLOW_NETWORKS": "127.0.0.0/8,::1/128",
        "IMGQ_WEBHOOK_RETRY_DELAYS": ",".join(map(str, DELAYS)),
    }
    cluster = Cluster(node, stack, env=env)
    try:
        with CallbackReceiver().running() as receiver:
            cluster.start_replica()
            cluster.start_gateway()
            cluster.start_gateway()
            _wait_replica_online(cluster.urls[0])
            yield Deployment(cluster, receiver)
    finally:
        stack.stop(timeout=15)
        node.stop()


def _wait_replica_online(base_url: str) -> None:
    """Until the gateway has heard the replica (tests.cluster's wait asks without a token)."""
    deadline = time.monotonic() + 180
    while not all(model["replicas"] for model in _get(base_url, "/info")["models"]):
        assert time.monotonic() < deadline, "the replica did not come online"
        time.sleep(0.2)


def _submit(
    base_url: str, callback: str, image: str = "coffee.jpg", fresh: bool = True
) -> dict[str, Any]:
    headers = {**AUTH, **({"Cache-Control": "no-cache"} if fresh else {})}
    body = {"model": MODEL, "image": image, "callback_url": callback}
    reply = api.post_json(base_url, "/classifications", body, headers)
    assert reply.status == 202, (reply.status, reply.body)
    job: dict[str, Any] = reply.json()
    return job


def _get(base_url: str, path: str) -> Any:
    reply = api.request(base_url, "GET", path, headers=AUTH)
    assert reply.status == 200, (reply.status, reply.body)
    return reply.json()


def _delivered(got: list[Received]) -> bool:
    return any(r.status == 200 for r in got)


def _deliveries(urls: list[str]) -> dict[str, float]:
    """imgq_webhook_deliveries_total by outcome, summed over the gateways."""
    total: Counter[str] = Counter()
    for url in urls:
        reply = api.request(url, "GET", "/metrics", headers=AUTH)
        metrics = parse(reply.body.decode())
        for outcome in ("succeeded", "retried", "given_up"):
            total[outcome] += metrics.value("imgq_webhook_deliveries_total", outcome=outcome)
    return dict(total)


def _wait_deliveries(urls: list[str], outcome: str, at_least: float) -> None:
    deadline = time.monotonic() + 60
    while (seen := _deliveries(urls)[outcome]) < at_least:
        assert time.monotonic() < deadline, f"{outcome}: {seen}, not {at_least}"
        time.sleep(0.05)


def _signed(received: Received) -> None:
    header = received.headers["imgq-signature"]
    assert verify(SECRET, header, received.body, time.time()), header
    assert header.startswith(f"t={received.headers['imgq-timestamp']},v1=")
    assert not verify(SECRET, header, received.body + b" ", time.time())
    assert not verify(secret_for_token("bob-token"), header, received.body, time.time())


def _settled(deployment: Deployment, sentinel_path: str) -> None:
    """Until every callback before a new job's is handled: the due queue is first in, first
    out, so a job submitted now is called back after every message already in it."""
    url = deployment.receiver.plan(sentinel_path)
    _submit(deployment.urls[-1], url, fresh=False)
    deployment.receiver.wait_for(_delivered, sentinel_path)


def test_a_job_is_called_back_once_final_signed_and_as_get_answers_it(
    deployment: Deployment,
) -> None:
    receiver = deployment.receiver
    url = receiver.plan("/one")
    job = _submit(deployment.urls[0], url)
    [got] = receiver.wait_for(_delivered, "/one")
    _signed(got)
    assert got.headers["content-type"] == "application/json"
    assert got.headers["imgq-event"] == "job.succeeded"
    assert got.headers["imgq-attempt"] == "1"
    payload = got.json()
    assert payload["id"] == got.delivery
    assert payload["type"] == "job.succeeded"
    # The job as any gateway answers for it (once its log has the end too).
    answer = _get(deployment.urls[1], f"/classifications/{job['job_id']}?wait=30")
    assert payload["job"] == answer
    assert_response_matches(
        "/classifications/{job_id}", "get", 200, "application/json", payload["job"]
    )
    assert payload["job"]["result"][0]["label"] == "espresso"


def test_a_receiver_that_fails_twice_gets_the_same_delivery_after_each_delay(
    deployment: Deployment,
) -> None:
    receiver = deployment.receiver
    before = _deliveries(deployment.urls)
    url = receiver.plan("/flaky", statuses=[500, 503])
    _submit(deployment.urls[1], url)
    got = receiver.wait_for(_delivered, "/flaky")
    assert [r.status for r in got] == [500, 503, 200]
    assert [r.headers["imgq-attempt"] for r in got] == ["1", "2", "3"]
    assert len({r.delivery for r in got}) == 1
    assert len({r.body for r in got}) == 1
    for received in got:
        _signed(received)
    # Each retry waited at least its delay after the attempt before it (a lower bound only:
    # the delay is what the broker holds the retry for).
    for delay, (earlier, later) in zip(DELAYS, itertools.pairwise(got), strict=True):
        assert later.at - earlier.at >= delay
    _wait_deliveries(deployment.urls, "succeeded", before["succeeded"] + 1)
    after = _deliveries(deployment.urls)
    assert after["retried"] - before["retried"] == 2
    assert after["given_up"] == before["given_up"]


def test_a_callback_is_given_up_after_its_last_attempt(deployment: Deployment) -> None:
    receiver = deployment.receiver
    before = _deliveries(deployment.urls)
    url = receiver.plan("/down", statuses=[500, 500, 500, 500])
    _submit(deployment.urls[0], url)
    _wait_deliveries(deployment.urls, "given_up", before["given_up"] + 1)
    got = receiver.at("/down")
    assert [r.status for r in got] == [500, 500, 500]  # one attempt per delay, and one more
    assert [r.headers["imgq-attempt"] for r in got] == ["1", "2", "3"]
    _settled(deployment, "/down-sentinel")
    assert len(receiver.at("/down")) == 3


@pytest.mark.parametrize(
    ("callback", "words"),
    [
        ("http://10.0.0.7/hook", "a private address"),
        ("http://192.168.1.20:8080/hook", "a private address"),
        ("http://169.254.169.254/latest/meta-data/", "a link-local address"),
        ("http://[fe80::1]/hook", "a link-local address"),
        ("http://0.0.0.0/hook", "an unspecified address"),
        ("ftp://example.com/hook", "http or https"),
        ("http://user:secret@127.0.0.1/hook", "user name or password"),
    ],
)
def test_callbacks_to_addresses_that_are_not_public_are_refused(
    deployment: Deployment, callback: str, words: str
) -> None:
    base_url = deployment.urls[0]
    for path, body in (
        ("/classifications", {"model": MODEL, "image": "cat.jpg", "callback_url": callback}),
        ("/batches", {"model": MODEL, "images": ["cat.jpg"], "callback_url": callback}),
    ):
        reply = api.post_json(base_url, path, body, AUTH)
        assert reply.status == 422, (reply.status, reply.body)
        problem = reply.json()
        assert problem["code"] == "callback_refused"
        assert words in problem["detail"], problem["detail"]
        assert_response_matches(path, "post", 422, reply.content_type, problem)


def test_every_callback_is_delivered_once_by_one_of_two_gateways(deployment: Deployment) -> None:
    receiver = deployment.receiver
    paths = [f"/many/{i}" for i in range(12)]
    jobs = []
    for i, path in enumerate(paths):
        # The first is classified; the rest are answered from its result, by the gateway.
        jobs.append(_submit(deployment.urls[i % 2], receiver.plan(path), fresh=False))
    for path, job in zip(paths, jobs, strict=True):
        [got] = receiver.wait_for(_delivered, path)
        assert got.json()["job"]["job_id"] == job["job_id"]
    _settled(deployment, "/many-sentinel")
    for path in paths:
        assert len(receiver.at(path)) == 1, path
    assert len({receiver.at(path)[0].delivery for path in paths}) == len(paths)


def test_a_batch_is_called_back_once_when_all_its_jobs_are_final(deployment: Deployment) -> None:
    receiver = deployment.receiver
    url = receiver.plan("/batch")
    images = ["coffee.jpg", "cat.jpg", "rocket.jpg"]
    headers = {**AUTH, "Cache-Control": "no-cache"}
    body = {"model": MODEL, "images": images, "callback_url": url}
    reply = api.post_json(deployment.urls[1], "/batches", body, headers)
    assert reply.status == 202, (reply.status, reply.body)
    batch_id = reply.json()["batch_id"]
    [got] = receiver.wait_for(_delivered, "/batch")
    _signed(got)
    payload = got.json()
    assert (payload["type"], got.headers["imgq-event"]) == ("batch.done", "batch.done")
    batch = payload["batch"]
    assert batch["batch_id"] == batch_id
    assert batch["done"] is True
    assert batch["counts"]["succeeded"] == len(images)
    assert [job["image"] for job in batch["jobs"]] == images
    assert batch == _get(deployment.urls[0], f"/batches/{batch_id}?wait=30")
    assert_response_matches("/batches/{batch_id}", "get", 200, "application/json", batch)
    # Every job's final event reached the gateways; one batch callback came of them, no other.
    _settled(deployment, "/batch-sentinel")
    assert len(receiver.at("/batch")) == 1


def test_exactly_one_delivery_when_the_gateway_attempting_it_is_killed(
    deployment: Deployment,
) -> None:
    receiver = deployment.receiver
    cluster = deployment.cluster
    url = receiver.plan("/killed", hold_first=True)
    job = _submit(cluster.urls[0], url)
    [held] = receiver.wait_for(lambda got: len(got) == 1, "/killed")
    gateways = [proc for proc, _ in cluster.gateways if proc.alive()]
    attempting = _sender(held, receiver, gateways)
    attempting.kill()
    # The broker gives the unacked message to the other gateway, which makes the attempt again.
    got = receiver.wait_for(_delivered, "/killed")
    receiver.release("/killed")
    _restart(cluster, attempting)
    _settled(deployment, "/killed-sentinel")
    got = receiver.at("/killed")
    assert len(got) == 2
    first, second = got
    assert first.delivery == second.delivery
    assert first.status is None  # its gateway died holding it: never answered
    assert second.status == 200
    assert second.json()["job"]["job_id"] == job["job_id"]


def test_a_gateway_stopped_mid_attempt_finishes_it_before_it_exits(
    deployment: Deployment,
) -> None:
    receiver = deployment.receiver
    cluster = deployment.cluster
    url = receiver.plan("/stopped", hold_first=True)
    _submit(cluster.urls[1], url)
    [held] = receiver.wait_for(lambda got: len(got) == 1, "/stopped")
    attempting = _sender(held, receiver, [proc for proc, _ in cluster.gateways if proc.alive()])
    attempting.process.send_signal(signal.SIGTERM)
    receiver.release("/stopped")
    assert attempting.process.wait(60) == 0
    _restart(cluster, attempting)
    _settled(deployment, "/stopped-sentinel")
    # Answered by the gateway that was stopping, acked before it went: no second attempt.
    assert [r.status for r in receiver.at("/stopped")] == [200]


def _restart(cluster: Cluster, dead: ManagedProcess) -> None:
    [(index, url)] = [(i, u) for i, (p, u) in enumerate(cluster.gateways) if p is dead]
    proc = cluster.stack.respawn(dead)
    cluster.gateways[index] = (proc, url)
    wait_http_ok(f"{url}/readyz", 60, proc)


def _sender(
    received: Received, receiver: CallbackReceiver, gateways: list[ManagedProcess]
) -> ManagedProcess:
    """The gateway whose connection sent ``received`` (from /proc: which process holds the
    socket on that port)."""
    server_port = urllib.parse.urlsplit(receiver.base_url).port
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table, encoding="ascii") as lines:
            for line in list(lines)[1:]:
                fields = line.split()
                local, remote = fields[1], fields[2]
                if (
                    int(local.rsplit(":", 1)[1], 16) == received.client_port
                    and int(remote.rsplit(":", 1)[1], 16) == server_port
                ):
                    inodes.add(f"socket:[{fields[9]}]")
    for proc in gateways:
        folder = f"/proc/{proc.pid}/fd"
        for fd in os.listdir(folder):
            try:
                if os.readlink(f"{folder}/{fd}") in inodes:
                    return proc
            except OSError:
                continue
    raise AssertionError(f"no gateway holds the connection from port {received.client_port}")
