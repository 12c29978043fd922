"""Trust only what the broker can vouch for, on a real broker with the deployment's users.

A producer (broker user ``imgq-producer``) publishes requests that claim another client's
owner, a known batch, known job IDs and that client's idempotency keys.  Replicas process
them as usual, but no gateway (one with the sender checks configured, one relying on its
own user) shows, fails or attaches any of it to that client's jobs or batch.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from compose.broker import BrokerNode, start_node
from compose.permissions import CLASSIFIER_USER, GATEWAY_USER, PRODUCER_USER
from compose.setup_broker import setup
from compose.stack import Stack
from gateway.clients import owner_of
from shared import wire
from shared.messages import BatchRef, ClassifyRequest, JobEvent, new_job_id
from shared.states import JobStatus
from shared.topology import REPLIES_EXCHANGE, REQUESTS_EXCHANGE
from tests import api
from tests.cluster import MODEL, Cluster, read_log

pytestmark = pytest.mark.timeout(300)

PASSWORDS = {GATEWAY_USER: "gw-secret", CLASSIFIER_USER: "cl-secret", PRODUCER_USER: "pr-secret"}
TOKENS = "alice-token,bob-token"
ALICE = {"Authorization": "Bearer alice-token"}
ALICE_OWNER = owner_of(b"alice-token")
ROCKET = (api.REPO / "images" / "rocket.jpg").read_bytes()


@pytest.fixture
def deployment(log_dir: Path) -> Iterator[tuple[BrokerNode, Cluster]]:
    node = start_node(management=True)
    stack = Stack(node.url, log_dir / "trust")
    stack.log_dir.mkdir(parents=True, exist_ok=True)
    try:
        setup(
            {
                "IMGQ_ADMIN_URL": node.url,
                "IMGQ_MANAGEMENT_URL": f"http://guest:guest@127.0.0.1:{node.management_port}",
                "IMGQ_GATEWAY_PASSWORD": PASSWORDS[GATEWAY_USER],
                "IMGQ_CLASSIFIER_PASSWORD": PASSWORDS[CLASSIFIER_USER],
                "IMGQ_PRODUCER_PASSWORD": PASSWORDS[PRODUCER_USER],
            }
        )
        yield node, Cluster(node, stack, env={"IMGQ_DECLARE_TOPOLOGY": "false"})
    finally:
        stack.stop(timeout=15)
        node.stop()


def _url(node: BrokerNode, user: str) -> str:
    return f"amqp://{user}:{PASSWORDS[user]}@127.0.0.1:{node.amqp_port}/"


def _as_alice(url: str, method: str, path: str, payload: Any = None, **headers: str) -> api.Reply:
    if payload is None:
        return api.request(url, method, path, headers={**ALICE, **headers})
    return api.post_json(url, path, payload, {**ALICE, **headers})


async def _produce(url: str, claims: list[tuple[ClassifyRequest, bytes, str | None]]) -> int:
    """Publish each (request, body, user_id) as the producer user, with a reply queue; return
    how many replies (final events) came back."""
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        replies = await channel.declare_queue(exclusive=True, auto_delete=True)
        # Least-privilege replicas reply through imgq.replies, not the default exchange.
        await replies.bind(REPLIES_EXCHANGE, routing_key=replies.name)
        exchange = await channel.get_exchange(REQUESTS_EXCHANGE, ensure=False)
        for request, body, user_id in claims:
            out = wire.request_message(request, reply_to=replies.name, user_id=user_id)
            out.message.body = body
            await exchange.publish(out.message, out.routing_key, mandatory=True)
        answered = 0
        async with replies.iterator(timeout=120) as incoming:
            async for _ in incoming:
                answered += 1
                if answered == sum(bool(body) for _, body, _ in claims):
                    break
        return answered


def _wait_logged(node: BrokerNode, job_id: str, status: JobStatus, requested_by: str) -> JobEvent:
    """The job's event in the log, written for a request that ``requested_by`` published."""
    deadline = time.monotonic() + 90
    while True:
        for event in read_log(node.url):
            if (event.job_id, event.status, event.requested_by) == (job_id, status, requested_by):
                return event
        assert time.monotonic() < deadline, f"no {status} event of {job_id} in the log"
        time.sleep(0.5)


def test_a_producer_cannot_claim_another_clients_jobs_batch_or_keys(
    deployment: tuple[BrokerNode, Cluster],
) -> None:
    node, cluster = deployment
    cluster.start_replica(IMGQ_BROKER_URL=_url(node, CLASSIFIER_USER))
    checked_proc, checked = cluster.start_gateway(
        IMGQ_BROKER_URL=_url(node, GATEWAY_USER),
        IMGQ_API_TOKENS=TOKENS,
        IMGQ_GATEWAY_USERS=GATEWAY_USER,
        IMGQ_CLASSIFIER_USERS=CLASSIFIER_USER,
    )
    # A gateway without the sender checks configured counts only its own user as a gateway's.
    plain_proc, plain = cluster.start_gateway(
        IMGQ_BROKER_URL=_url(node, GATEWAY_USER), IMGQ_API_TOKENS=TOKENS
    )

    images = {"model": MODEL, "images": ["coffee.jpg", "cat.jpg"]}
    accepted = _as_alice(checked, "POST", "/batches", images, **{"Idempotency-Key": "order"})
    assert accepted.status == 202, accepted.body
    batch_id = accepted.json()["batch_id"]
    first, second = (job["job_id"] for job in accepted.json()["jobs"])
    deadline = time.monotonic() + 180  # the replica may still be starting
    while not (before := _as_alice(checked, "GET", f"/batches/{batch_id}?wait=30").json())["done"]:
        assert time.monotonic() < deadline, before

    ref = BatchRef(batch_id, 1, 2)
    own = new_job_id()
    claims = [
        # A job of its own, claiming alice as owner, a place in her batch and a key she will use.
        (ClassifyRequest(own, MODEL, "rocket.jpg", time.time(), owner=ALICE_OWNER,
                         batch=ref, idempotency_key="later", image=ROCKET), ROCKET, PRODUCER_USER),
        # One that reuses a key alice already used.
        (ClassifyRequest(new_job_id(), MODEL, "rocket.jpg", time.time(), owner=ALICE_OWNER,
                         idempotency_key="order#1", image=ROCKET), ROCKET, PRODUCER_USER),
        # Alice's first job's ID, another image, and no user_id at all.
        (ClassifyRequest(first, MODEL, "rocket.jpg", time.time(), owner=ALICE_OWNER,
                         batch=BatchRef(batch_id, 0, 2), image=ROCKET), ROCKET, None),
        # Alice's second job's ID and no image: dead-lettered, and a gateway reports it failed.
        (ClassifyRequest(second, MODEL, "nothing.jpg", time.time(), owner=ALICE_OWNER,
                         batch=ref, image=b"x"), b"", PRODUCER_USER),
    ]  # fmt: skip
    assert asyncio.run(_produce(_url(node, PRODUCER_USER), claims)) == 3
    # What the claims caused is in the log, as the producer's; behind it, a job of alice's:
    # once a gateway has that job, it has read all of them.
    for request, body, user_id in claims:
        if body:
            _wait_logged(node, request.job_id, JobStatus.SUCCEEDED, user_id or "")
    dead = _wait_logged(node, second, JobStatus.FAILED, PRODUCER_USER)
    assert dead.error is not None
    assert dead.error.code == "dead_lettered"
    later = _as_alice(checked, "POST", "/classifications", {"model": MODEL, "image": "cat.jpg"})
    for url in (checked, plain):
        final = _as_alice(url, "GET", f"/classifications/{later.json()['job_id']}?wait=30")
        assert final.json()["status"] == "succeeded"

    for url in (checked, plain):
        batch = _as_alice(url, "GET", f"/batches/{batch_id}").json()
        # Nothing failed, nothing replaced, nothing added.
        assert [job["job_id"] for job in batch["jobs"]] == [first, second], url
        assert batch["jobs"] == before["jobs"], url
        # The producer's own job is there, as nobody's.
        assert _as_alice(url, "GET", f"/classifications/{own}").json()["status"] == "succeeded"
        # Alice's keys still name her jobs.
        again = _as_alice(url, "POST", "/batches", images, **{"Idempotency-Key": "order"})
        assert [job["job_id"] for job in again.json()["jobs"]] == [first, second], url
    # A key the producer used first is still alice's to use, on every gateway.
    mine = _as_alice(
        checked, "POST", "/classifications", {"model": MODEL, "image": "rocket.jpg"},
        **{"Idempotency-Key": "later"},
    )  # fmt: skip
    assert mine.status == 202
    assert mine.json()["job_id"] != own
    assert "idempotent-replayed" not in mine.headers
    deadline = time.monotonic() + 30
    while _as_alice(plain, "GET", f"/classifications/{mine.json()['job_id']}").status != 200:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    replayed = _as_alice(
        plain, "POST", "/classifications", {"model": MODEL, "image": "rocket.jpg"},
        **{"Idempotency-Key": "later"},
    )  # fmt: skip
    assert replayed.json()["job_id"] == mine.json()["job_id"]
    for proc in (checked_proc, plain_proc):
        assert "not a gateway" in proc.log_tail(1_000_000), proc.name
