"""Liveness and readiness under the local supervisor (compose/supervise.py), on a real broker.

A broker outage makes every service unready and leaves every one alive, so nothing is
restarted; a replica that holds work and makes no progress is reported stalled and restarted,
as a Kubernetes liveness probe would have it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from compose.stack import ManagedProcess
from compose.supervise import Supervisor
from tests import api
from tests.cluster import MODEL, Cluster

pytestmark = pytest.mark.timeout(420)

Figure = Callable[[str], None]


def _healthcheck(replica: ManagedProcess, *args: str) -> tuple[int, str]:
    """``python -m classifier_service.healthcheck`` as a container runtime runs it."""
    result = subprocess.run(
        [sys.executable, "-m", "classifier_service.healthcheck", *args],
        cwd=api.REPO,
        env={**os.environ, "IMGQ_HEALTH_FILE": replica.env["IMGQ_HEALTH_FILE"]},
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result.returncode, result.stderr.strip()


def _status(url: str, path: str) -> int:
    try:
        return api.get(url, path, timeout=5).status
    except OSError:
        return 0


def _until(condition: Callable[[], bool], what: str, timeout: float = 120) -> float:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f} s"
        time.sleep(0.2)
    return time.monotonic()


@contextmanager
def _supervised(cluster: Cluster) -> Iterator[Supervisor]:
    """The launcher's supervisor over the cluster's services (not its broker node: the test
    takes that down itself)."""
    supervisor = Supervisor(cluster.stack)
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(0.5):
            supervisor.check()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield supervisor
    finally:
        stop.set()
        thread.join()


# Long enough that a liveness check tied to the broker would have failed several times over:
# the health file goes stale after 10 s, and three failed probes 2 s apart restart a process.
OUTAGE_SECONDS = 20


def test_a_broker_outage_makes_services_unready_but_restarts_none(
    cluster: Cluster, figure: Figure
) -> None:
    replica = cluster.start_replica()
    gateway, url = cluster.start_gateway()
    cluster.wait_replicas(1)
    with _supervised(cluster) as supervisor:
        assert _healthcheck(replica, "--ready") == (0, "")
        # Stopped as an operator (or a host shutdown) stops it.  A single node SIGKILLed seconds
        # after its first start can keep its streams down for minutes on RabbitMQ 3.10 (its
        # stream coordinator does not come back), which is the broker's failure, not the one
        # this test is about.
        cluster.node.shut_down()
        down = time.monotonic()
        _until(lambda: _healthcheck(replica, "--ready")[0] == 1, "replica unready")
        _until(lambda: _status(url, "/readyz") == 503, "gateway unready")
        unready_after = time.monotonic() - down
        code, why = _healthcheck(replica, "--ready")
        assert code == 1
        assert "not connected to the broker" in why, why
        probes = 0
        while time.monotonic() - down < OUTAGE_SECONDS:
            assert _healthcheck(replica) == (0, ""), "the replica's liveness failed"
            assert _status(url, "/healthz") == 200, "the gateway's liveness failed"
            probes += 1
        assert supervisor.unhealthy == {}
        assert supervisor.restarts == {}
        cluster.node.start_again()
        up = time.monotonic()
        _until(lambda: _healthcheck(replica, "--ready")[0] == 0, "replica ready again")
        _until(lambda: _status(url, "/readyz") == 200, "gateway ready again")
        ready_after = time.monotonic() - up
        job = api.submit(url, MODEL, "cat.jpg")
        assert api.wait_final(url, job["job_id"], 120)["status"] == "succeeded"
        assert supervisor.unhealthy == {}
        assert supervisor.restarts == {}
    assert replica.alive()
    assert gateway.alive()
    figure(
        f"broker down {up - down:.0f} s: replica and gateway unready within "
        f"{unready_after:.1f} s, alive at all {probes} probes, none restarted; ready again "
        f"{ready_after:.1f} s after the broker came back, and a job ran"
    )


def test_a_stalled_replica_is_reported_and_restarted(cluster: Cluster, figure: Figure) -> None:
    # Every inference takes a minute, well inside its time limit, and the replica holds it
    # with no progress for longer than its 2 s stall limit: stuck, as far as anyone can tell.
    replica = cluster.start_replica(
        IMGQ_DEBUG_DELAY="60", IMGQ_JOB_TIME_LIMIT="120", IMGQ_STALL_TIMEOUT="2"
    )
    _, url = cluster.start_gateway()
    cluster.wait_replicas(1)
    with _supervised(cluster) as supervisor:
        job = api.submit(url, MODEL, "cat.jpg")
        submitted = time.monotonic()
        _until(lambda: _healthcheck(replica)[0] == 1, "the replica reported unhealthy")
        code, why = _healthcheck(replica)
        assert code == 1
        assert "stalled" in why, why
        assert _healthcheck(replica, "--ready")[0] == 1
        # /status hears it from the replica's heartbeat, which may land just after.
        _until(
            lambda: (
                [
                    r["stalled"]
                    for r in api.get(url, "/status").json()["replicas"]
                    if r["replica"] == replica.name
                ]
                == [True]
            ),
            "/status showing the replica stalled",
        )
        _until(lambda: supervisor.restarts.get(replica.name, 0) >= 1, "restarted", 120)
        restarted = time.monotonic() - submitted
        assert supervisor.unhealthy[replica.name] >= 1
        # The new process reports the job its predecessor was running when it was stopped.
        log = Path(replica.log_file)
        _until(lambda: "died running 1 job(s)" in log.read_text(), "the crash reported")
        assert job["job_id"] in log.read_text()
    figure(
        f"replica stalled (2 s limit, 60 s inference): reported stalled by its health check "
        f"and /status, restarted {restarted:.0f} s after the job was submitted, and its "
        "successor reported the job as a crash"
    )
