"""Several gateway processes on one port (IMGQ_GATEWAY_PROCESSES) on a real broker: a gateway of
two processes serving, restarting one that dies, answering for a hung one, and stopping
together (the setting and the sockets: tests/unit/test_processes.py)."""

from __future__ import annotations

import os
import signal
import threading
import time
import urllib.error
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from compose.stack import ManagedProcess
from tests import api
from tests.cluster import MODEL, Cluster
from tests.prometheus import parse

Figure = Callable[[str], None]


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid:
                found.append(int(entry.name))
    return sorted(found)


def _by_process(url: str, family: str, **labels: str) -> dict[str, float]:
    """A metric summed per gateway process (its ``process`` label) from /metrics."""
    parsed = parse(api.get(url, "/metrics").body.decode())
    totals: dict[str, float] = {}
    for series, value in parsed.series(family).items():
        found = dict(series)
        if all(found.get(k) == v for k, v in labels.items()):
            totals[found["process"]] = totals.get(found["process"], 0.0) + value
    return totals


def _until(condition: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, what
        time.sleep(0.1)
    return result


def _gateway(cluster: Cluster) -> tuple[ManagedProcess, str]:
    return cluster.start_gateway(IMGQ_GATEWAY_PROCESSES="2")


@pytest.mark.timeout(300)
def test_two_processes_share_the_port_a_dead_one_comes_back_and_sigterm_stops_both(
    cluster: Cluster, figure: Figure
) -> None:
    gateway, url = _gateway(cluster)
    pids = _until(lambda: len(c := _children(gateway.pid)) == 2 and c, "two processes")
    # Both take jobs (each connection goes to one of them), and /metrics has both.
    jobs = []

    def both_accepted() -> bool:
        jobs.append(api.submit(url, MODEL, "cat.jpg")["job_id"])
        accepted = _by_process(url, "imgq_http_requests_total", route="/classifications")
        return len(accepted) == 2

    _until(both_accepted, "every process accepting jobs")
    # Either process answers for any job: each follows the whole event log.
    for job_id in jobs:
        assert api.get(url, f"/classifications/{job_id}").json()["status"] == "queued"

    # One dies: the supervisor starts it again, and the gateway is ready once it is.
    os.kill(pids[1], signal.SIGKILL)
    died = time.monotonic()
    restarted = _until(
        lambda: len(c := _children(gateway.pid)) == 2 and pids[1] not in c and c,
        "the dead process started again",
    )
    _until(lambda: api.get(url, "/readyz").status == 200, "ready again")
    back = time.monotonic() - died
    assert pids[0] in restarted
    assert gateway.alive()

    # Long-polls held by both processes are answered at once on SIGTERM.
    answers: list[tuple[int, str, float]] = []

    def long_poll() -> None:
        t0 = time.monotonic()
        reply = api.get(url, f"/classifications/{jobs[0]}?wait=30")
        answers.append((reply.status, reply.json()["status"], time.monotonic() - t0))

    polls: list[threading.Thread] = []
    held: dict[str, float] = {}
    while len([n for n in held.values() if n > 0]) < 2:
        assert len(polls) < 50, f"50 long-polls, all held by one process: {held}"
        polls.append(threading.Thread(target=long_poll))
        polls[-1].start()
        held = _until(
            lambda: (
                (h := _by_process(url, "imgq_long_polls_waiting"))
                and sum(h.values()) == len(polls)
                and h
            ),
            "the long-poll held",
        )
    t0 = time.monotonic()
    gateway.process.send_signal(signal.SIGTERM)
    code = gateway.process.wait(30)
    stopped = time.monotonic() - t0
    for poll in polls:
        poll.join(10)
    assert code == 0
    assert len(answers) == len(polls)
    for status, job_status, waited in answers:
        assert (status, job_status) == (200, "queued")
        assert waited < 25, "a held long-poll must be answered at shutdown, not time out"
    assert all(_gone(pid) for pid in restarted)
    figure(
        f"2 gateway processes: a SIGKILLed one ready again in {back:.1f} s; SIGTERM answered "
        f"{len(polls)} long-polls held by both and stopped all in {stopped:.2f} s"
    )


@pytest.mark.timeout(300)
def test_a_hung_process_fails_liveness_and_none_outlives_the_supervisor(
    cluster: Cluster,
) -> None:
    gateway, url = _gateway(cluster)
    pids = _until(lambda: len(c := _children(gateway.pid)) == 2 and c, "two processes")
    os.kill(pids[1], signal.SIGSTOP)
    try:

        def says_unresponsive() -> api.Reply | None:
            try:
                # A probe the kernel hands to the stopped process waits: try again.
                reply = api.get(url, "/healthz", timeout=5)
            except (TimeoutError, urllib.error.URLError):
                return None
            return reply if reply.status == 503 else None

        reply = _until(says_unresponsive, "liveness failing while a process hangs")
        assert reply.json()["code"] == "unresponsive"
        assert "gateway process 1" in reply.json()["detail"]
    finally:
        os.kill(pids[1], signal.SIGCONT)
    _until(lambda: api.get(url, "/healthz").status == 200, "alive again")

    # The supervisor killed outright: the kernel stops its processes (PR_SET_PDEATHSIG).
    gateway.process.kill()
    gateway.process.wait(10)

    _until(lambda: all(_gone(pid) for pid in pids), "processes outliving their supervisor")


def _gone(pid: int) -> bool:
    """Exited: no such process, or one that only waits to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"
