"""The gateway's liveness and readiness: a broker outage makes it unready, never dead; a
background task that dies ends the process, non-zero, so that its supervisor starts another."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from compose.broker import free_port
from tests import api
from tests.cluster import MODEL, Cluster
from tests.conftest import REPO


def _wait_for(url: str, path: str, status: int, timeout: float) -> api.Reply:
    deadline = time.monotonic() + timeout
    while True:
        reply = api.get(url, path, timeout=10)
        if reply.status == status:
            return reply
        assert time.monotonic() < deadline, (path, reply.status, reply.body)
        time.sleep(0.1)


@pytest.mark.broker
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


_DYING_SESSION = """
import sys
import shared.session

async def dies(self):
    raise RuntimeError("the session loop broke")

shared.session.SessionLoop.run = dies
from gateway.__main__ import main
main([])
"""


def test_a_gateway_whose_session_loop_dies_exits_non_zero_saying_why() -> None:
    env = {
        **os.environ,
        "IMGQ_HTTP_PORT": str(free_port()),
        # Nothing needs to answer: the session loop dies before it connects.
        "IMGQ_BROKER_URL": f"amqp://guest:guest@127.0.0.1:{free_port()}/",
    }
    done = subprocess.run(
        [sys.executable, "-c", _DYING_SESSION],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 70, done.stderr
    assert "background task 'broker-session' died: RuntimeError('the session loop broke')" in (
        done.stderr
    )
    assert "stopping the gateway" in done.stderr
