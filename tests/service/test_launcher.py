"""The local launcher keeps the system up: what dies is restarted, and only Ctrl-C stops it.

Runs ``python -m compose.launch`` (what ``scripts/up`` runs) as a real process, puts load on
it, SIGKILLs a replica and then the gateway, and checks that every accepted job completes
and the launcher is still up; then Ctrl-C stops everything it started.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from compose.broker import free_port
from tests import api

pytestmark = pytest.mark.timeout(400)

MODEL = "efficientnet_lite0"


def _children(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of every live descendant of ``pid``."""
    parents: dict[int, int] = {}
    commands: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] == "Z":
            continue
        parents[int(entry.name)] = int(fields[1])
        commands[int(entry.name)] = command
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        for child, ppid in parents.items():
            if ppid == parent:
                found.append((child, commands[child]))
                frontier.append(child)
    return found


def _runs(command: str, module: str) -> bool:
    """``python -m module`` exactly (not ``-m module.export``, a child it may start)."""
    words = command.split()
    return words[-2:] == ["-m", module]


def _service_pid(launcher: int, module: str) -> int:
    matches = [pid for pid, cmd in _children(launcher) if _runs(cmd, module)]
    assert matches, f"no {module} process under the launcher"
    return matches[0]


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str, Path]]:
    port = free_port()
    log = tmp_path / "launch.log"
    env = {**os.environ, "IMGQ_MODELS": MODEL, "IMGQ_HEARTBEAT_INTERVAL": "0.5"}
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "compose.launch", "--replicas", "2", "--port", str(port)],
            cwd=api.REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    try:
        deadline = time.monotonic() + 240
        while "imgq is up" not in log.read_text():
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        yield proc, f"http://127.0.0.1:{port}", log
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(90)
            except subprocess.TimeoutExpired:
                proc.kill()


def _submit_retrying(url: str, image: str, deadline: float) -> str:
    """A client that retries refusals and a gateway that is briefly gone."""
    while True:
        try:
            reply = api.post_json(
                url,
                "/classifications",
                {"model": MODEL, "image": image},
                {"Cache-Control": "no-cache"},
            )
            if reply.status == 202:
                return str(reply.json()["job_id"])
        except OSError:
            pass
        assert time.monotonic() < deadline, "submissions were refused for too long"
        time.sleep(0.2)


def test_killed_replica_and_gateway_are_restarted_and_no_job_is_lost(
    launcher: tuple[subprocess.Popen[str], str, Path], figure: Callable[[str], None]
) -> None:
    proc, url, log = launcher
    accepted: list[str] = []
    stop = threading.Event()

    def load() -> None:
        deadline = time.monotonic() + 180
        i = 0
        while not stop.is_set():
            accepted.append(_submit_retrying(url, ["cat.jpg", "coffee.jpg"][i % 2], deadline))
            i += 1
            time.sleep(0.02)

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    # Each fault strikes while jobs flow: after so many accepted, not after a guessed time.
    _wait_accepted(accepted, 20)
    replica = _service_pid(proc.pid, "classifier_service")
    os.kill(replica, signal.SIGKILL)
    _wait_accepted(accepted, len(accepted) + 20)
    gateway = _service_pid(proc.pid, "gateway")
    os.kill(gateway, signal.SIGKILL)
    killed = time.monotonic()
    # The gateway comes back on the same port; the load's retries get through again.
    count = len(accepted)
    deadline = time.monotonic() + 60
    while len(accepted) <= count + 5:
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.2)
    back = time.monotonic() - killed
    stop.set()
    thread.join(60)
    assert proc.poll() is None, "the launcher stopped"
    with ThreadPoolExecutor(16) as pool:
        finals = list(pool.map(lambda job_id: api.wait_final(url, job_id, 180), accepted))
    assert all(f["status"] == "succeeded" for f in finals), [f["status"] for f in finals]
    text = log.read_text()
    restarts = re.findall(r"(\S+) restarted \(restart (\d+)\)", text)
    names = {name for name, _ in restarts}
    assert any(n.startswith("replica-") for n in names), text[-3000:]
    assert any(n.startswith("gateway-") for n in names), text[-3000:]
    assert _service_pid(proc.pid, "gateway") != gateway
    # Both replicas run again, and the killed one is not among them: it was started anew.
    replicas = [pid for pid, cmd in _children(proc.pid) if _runs(cmd, "classifier_service")]
    assert len(replicas) == 2, replicas
    assert replica not in replicas
    # The restarted replica says so in its heartbeats, which the restarted gateway hears
    # within a heartbeat interval of its start: /status shows it once one has come.
    deadline = time.monotonic() + 30
    while True:
        status = api.get(url, "/status").json()
        if max((r.get("restarts", 0) for r in status["replicas"]), default=0) >= 1:
            break
        assert time.monotonic() < deadline, status["replicas"]
        time.sleep(0.2)
    figure(
        f"launcher: replica and gateway SIGKILLed under load, both restarted; {len(accepted)} "
        f"accepted, all succeeded, submissions accepted again {back:.1f} s after the gateway "
        "was killed; the launcher stayed up"
    )
    # Ctrl-C stops everything it started.
    children = [pid for pid, _ in _children(proc.pid)]
    proc.send_signal(signal.SIGINT)
    proc.wait(90)
    # The launcher waits for what it stopped; a process reaped by then is gone from /proc
    # soon after, so this polls briefly rather than guessing how long that takes.
    deadline = time.monotonic() + 30
    while alive := [pid for pid in children if Path(f"/proc/{pid}").exists() and _not_zombie(pid)]:
        assert time.monotonic() < deadline, alive
        time.sleep(0.1)


def _wait_accepted(accepted: list[str], count: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while len(accepted) < count:
        assert time.monotonic() < deadline, f"only {len(accepted)} jobs accepted"
        time.sleep(0.05)


def _not_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
