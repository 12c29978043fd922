"""No client can harm another: per-client shares, and with tokens, each client's jobs are its own.

Runs extra gateways on the suite's broker and replicas, with the shares turned on (the rest
of the suite turns them off: all its clients are 127.0.0.1) or with two API tokens (the
limits on their own: tests/unit/test_client_limits.py)."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest

from tests import api
from tests.cluster import Cluster
from tests.conftest import Service

MODEL = "efficientnet_lite0"


def _post(url: str, image: str, token: str | None = None, **headers: str) -> api.Reply:
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return api.post_json(url, "/classifications", {"model": MODEL, "image": image}, headers)


def _get(url: str, path: str, token: str) -> api.Reply:
    return api.request(url, "GET", path, headers={"Authorization": f"Bearer {token}"})


def test_a_client_over_its_rate_gets_429_with_retry_after(service: Service) -> None:
    url = service.extra_gateway(IMGQ_CLIENT_RATE="1", IMGQ_CLIENT_BURST="3")
    replies = [_post(url, "cat.jpg") for _ in range(5)]
    statuses = [r.status for r in replies]
    assert statuses[:3] == [202, 202, 202], statuses
    assert 429 in statuses[3:], statuses
    refused = next(r for r in replies if r.status == 429)
    assert refused.content_type == "application/problem+json"
    assert refused.json()["code"] == "too_many_requests"
    assert int(refused.headers["retry-after"]) >= 1


def test_a_client_holding_too_many_long_polls_gets_429(cluster: Cluster) -> None:
    # No replica on this fresh node: the job stays queued, so its long-polls are held.
    _, url = cluster.start_gateway(IMGQ_CLIENT_WAITS="2", IMGQ_CLIENT_RATE="0")
    job = _post(url, "cat.jpg").json()
    path = f"/classifications/{job['job_id']}?wait=6"
    held: list[api.Reply] = []
    threads = [threading.Thread(target=lambda: held.append(api.get(url, path))) for _ in range(2)]
    for thread in threads:
        thread.start()
    api.wait_long_polls(url, 2)
    third = api.get(url, path)
    for thread in threads:
        thread.join()
    assert third.status == 429, third.body
    assert third.json()["code"] == "too_many_requests"
    assert int(third.headers["retry-after"]) >= 1
    assert [r.status for r in held] == [200, 200]
    # A plain poll (no wait) holds nothing and is always answered.
    assert api.get(url, f"/classifications/{job['job_id']}").status == 200


def test_an_event_stream_ends_after_its_maximum_life(cluster: Cluster) -> None:
    _, url = cluster.start_gateway(IMGQ_STREAM_SECONDS="2", IMGQ_CLIENT_RATE="0")
    job = _post(url, "cat.jpg").json()
    started = time.monotonic()
    reply = api.get(url, f"/classifications/{job['job_id']}/events", timeout=30)
    lasted = time.monotonic() - started
    assert reply.status == 200
    assert reply.body.count(b"event: job") == 1  # the job never moved: no replica here
    # The server ended it at its lifetime, not at a keep-alive (15 s) or the client's timeout.
    assert 1.5 < lasted < 12, lasted


@pytest.fixture(scope="module")
def two_clients(service: Service) -> str:
    return service.extra_gateway(IMGQ_API_TOKENS="token-alice,token-bob", IMGQ_CLIENT_RATE="0")


def test_another_clients_job_is_not_found(two_clients: str) -> None:
    url = two_clients
    job = _post(url, "cat.jpg", "token-alice", **{"Cache-Control": "no-cache"}).json()
    path = f"/classifications/{job['job_id']}"
    assert _get(url, path, "token-alice").status == 200
    for method, where in (("GET", path), ("DELETE", path), ("GET", f"{path}/events")):
        reply = api.request(
            url, method, where, headers={"Authorization": "Bearer token-bob"}, timeout=30
        )
        assert reply.status == 404, (method, where, reply.status)
        assert reply.json()["code"] == "job_not_found"
    assert _get(url, f"{path}?wait=30", "token-alice").json()["status"] == "succeeded"


def test_idempotency_keys_and_reuse_are_per_client(two_clients: str) -> None:
    url = two_clients
    key = f"order-{time.time_ns()}"
    first = _post(url, "coffee.jpg", "token-alice", **{"Idempotency-Key": key}).json()
    again = _post(url, "coffee.jpg", "token-alice", **{"Idempotency-Key": key})
    assert again.json()["job_id"] == first["job_id"]
    assert again.headers.get("idempotent-replayed") == "true"
    # The same key from another client is another job, not Alice's.
    bobs = _post(url, "coffee.jpg", "token-bob", **{"Idempotency-Key": key}).json()
    assert bobs["job_id"] != first["job_id"]
    for job, token in ((first, "token-alice"), (bobs, "token-bob")):
        assert _get(url, f"/classifications/{job['job_id']}?wait=30", token).status == 200
    # Reuse: Bob's resubmission reuses Bob's own result, never naming Alice's job.
    reused = _post(url, "coffee.jpg", "token-bob").json()
    assert reused["reused_from"] == bobs["job_id"]
    assert first["job_id"] not in json.dumps(reused)


def test_resubmitting_an_image_does_not_log_a_job_each_time(two_clients: str) -> None:
    url = two_clients
    original = _post(url, "rocket.jpg", "token-alice", **{"Cache-Control": "no-cache"}).json()
    assert _get(url, f"/classifications/{original['job_id']}?wait=30", "token-alice").status == 200
    answers: list[dict[str, Any]] = [
        _post(url, "rocket.jpg", "token-alice").json() for _ in range(5)
    ]
    assert all(a["status"] == "succeeded" for a in answers)
    assert {a["reused_from"] for a in answers} == {original["job_id"]}
    # The first resubmission made one reused job; the next four are answered with it.
    assert len({a["job_id"] for a in answers}) == 1
