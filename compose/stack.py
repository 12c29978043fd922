"""Start the gateway and classifier replicas as real processes around a broker.

One implementation for the local launcher, the test suite and the benchmark.
Each replica gets its inference thread count from the cores it shares with the
others: replicas x threads above the core count ran 8x slower here.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from classifier_service.health import liveness as replica_liveness
from compose.broker import free_port

REPO = Path(__file__).resolve().parent.parent
# A liveness probe that takes longer failed (a kubelet's default is 1 s; a loaded laptop
# deserves more).
PROBE_TIMEOUT = 3.0


@dataclass
class ManagedProcess:
    name: str
    process: subprocess.Popen[bytes]
    log_file: Path
    # What it was started as, so a supervisor can start it again the same way.
    module: str = ""
    env: dict[str, str] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit code."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait(10)

    def kill(self) -> None:
        if self.alive():
            self.process.kill()
        self.process.wait(10)

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_file.read_text(errors="replace")[-chars:]

    def liveness(self) -> str | None:
        """Why this running process is not alive, or None when it is: what Kubernetes' liveness
        probes ask.  A replica: its health file is fresh and it is not stalled (the same logic
        as ``python -m classifier_service.healthcheck``); a gateway: ``GET /healthz`` answers.
        Neither depends on the broker."""
        if self.module == "classifier_service":
            return replica_liveness(Path(self.env["IMGQ_HEALTH_FILE"]))
        if self.module == "gateway":
            host = self.env.get("IMGQ_HTTP_HOST", "127.0.0.1")
            if host in ("0.0.0.0", "::", ""):
                host = "127.0.0.1"
            return _http_ok(f"http://{host}:{self.env['IMGQ_HTTP_PORT']}/healthz")
        return None


def _http_ok(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT) as response:
            return None if response.status == 200 else f"{url} answered {response.status}"
    except urllib.error.HTTPError as exc:
        return f"{url} answered {exc.code}"
    except OSError as exc:
        return f"{url} did not answer: {exc!r}"


def threads_per_replica(replicas: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(1, replicas))


@dataclass
class Stack:
    broker_url: str
    log_dir: Path
    processes: list[ManagedProcess] = field(default_factory=list)
    # Every node of a cluster (IMGQ_BROKER_URLS); empty for a single node.
    broker_urls: tuple[str, ...] = ()

    def respawn(self, dead: ManagedProcess, **extra_env: str) -> ManagedProcess:
        """Start a process that exited again, as it was started (same name, port, env)."""
        if dead in self.processes:
            self.processes.remove(dead)
        if "IMGQ_HEALTH_FILE" in dead.env:
            # What the dead one last wrote says nothing about its successor (its journal, of
            # the jobs it died running, stays: the successor reports them).
            Path(dead.env["IMGQ_HEALTH_FILE"]).unlink(missing_ok=True)
        return self._spawn(dead.name, dead.module, {**dead.env, **extra_env})

    def _spawn(self, name: str, module: str, env: dict[str, str]) -> ManagedProcess:
        log_file = self.log_dir / f"{name}.log"
        full_env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "IMGQ_BROKER_URL": self.broker_url,
            **({"IMGQ_BROKER_URLS": ",".join(self.broker_urls)} if self.broker_urls else {}),
            **env,
        }
        with open(log_file, "ab") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", module],
                cwd=REPO,
                env=full_env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        managed = ManagedProcess(name, process, log_file, module, env)
        self.processes.append(managed)
        return managed

    def start_gateway(
        self, *, port: int | None = None, host: str = "127.0.0.1", env: dict[str, str] | None = None
    ) -> tuple[ManagedProcess, str]:
        port = port or free_port()
        name = f"gateway-{port}"
        proc = self._spawn(
            name,
            "gateway",
            {"IMGQ_HTTP_HOST": host, "IMGQ_HTTP_PORT": str(port), **(env or {})},
        )
        return proc, f"http://127.0.0.1:{port}"

    def start_replica(
        self, replica_id: str, *, threads: int = 1, env: dict[str, str] | None = None
    ) -> ManagedProcess:
        return self._spawn(
            replica_id,
            "classifier_service",
            {
                "IMGQ_REPLICA_ID": replica_id,
                "IMGQ_INFERENCE_THREADS": str(threads),
                # OpenMP/MKL read these before the runtime does: keep them in line with it.
                "OMP_NUM_THREADS": str(threads),
                "MKL_NUM_THREADS": str(threads),
                "IMGQ_HEALTH_FILE": str(self.log_dir / f"{replica_id}.alive"),
                # Replicas on one host each need their own metrics port.
                "IMGQ_METRICS_PORT": str(free_port()),
                **(env or {}),
            },
        )

    def stop(self, timeout: float = 30.0) -> None:
        for proc in self.processes:
            if proc.alive():
                proc.process.send_signal(signal.SIGTERM)
        for proc in self.processes:
            proc.terminate(timeout)


def wait_http_ok(url: str, timeout: float, proc: ManagedProcess | None = None) -> None:
    """Wait until ``url`` answers 200 (e.g. /readyz)."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{proc.name} exited early; log tail:\n{proc.log_tail()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
        except OSError as exc:
            last = repr(exc)
        time.sleep(0.1)
    tail = proc.log_tail() if proc is not None else ""
    raise TimeoutError(f"{url} not ready after {timeout:.0f} s ({last}); log tail:\n{tail}")


def wait_replicas_online(base_url: str, count: int, timeout: float) -> None:
    """Wait until the gateway has heard heartbeats from ``count`` replicas for every model."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base_url}/info", timeout=2) as response:
                info = json.load(response)
            if all(m["replicas"] >= count for m in info["models"]):
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{count} replicas not online after {timeout:.0f} s")
