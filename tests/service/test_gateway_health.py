"""The gateway's readiness: a broker outage makes it unready, never dead (a background task that
dies ends the process: tests/unit/test_gateway_health.py)."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests import api
from tests.cluster import MODEL, Cluster


def _wait_for(url: str, path: str, status: int, timeout: float) -> api.Reply:
    deadline = time.monotonic() + timeout
    while True:
        reply = api.get(url, path, timeout=10)
        if reply.status == status:
            return reply
        assert time.monotonic() < deadline, (path, reply.status, reply.body)
        time.sleep(0.1)


@pytest.mark.timeout(300)
def test_a_broker_outage_makes_the_gateway_unready_and_never_restarts_it(
    cluster: Cluster, figure: Callable[[str], None]
) -> None:
    gateway, url = cluster.start_gateway()
    pid = gateway.pid
    assert api.get(url, "/healthz").status == 200

    cluster.node.shut_down()
    down = time.monotonic()
    unready = _wait_for(url, "/readyz", 503, timeout=60)
    noticed = time.monotonic() - down
    assert unready.content_type == "application/problem+json"
    problem = unready.json()
    assert (problem["status"], problem["code"]) == (503, "not_ready")
    assert int(unready.headers["retry-after"]) > 0
    # Alive all along: what restarts on liveness has no reason to.
    health = api.get(url, "/healthz")
    assert (health.status, health.json()) == (200, {"status": "ok"})
    refused = api.post_json(url, "/classifications", {"model": MODEL, "image": "cat.jpg"})
    assert refused.status == 503

    cluster.node.start_again()
    up = time.monotonic()
    _wait_for(url, "/readyz", 200, timeout=90)
    ready_again = time.monotonic() - up
    assert gateway.alive()
    assert gateway.pid == pid
    assert api.submit(url, MODEL, "cat.jpg")["status"] == "queued"
    figure(
        f"broker node stopped: /readyz 503 (not_ready) {noticed:.1f} s later, /healthz 200 "
        f"throughout; ready again {ready_again:.1f} s after the node came back, same process"
    )
