"""Keep the local deployment up, as compose's restart policy and Kubernetes' probes would.

A replica or gateway that exits (a crash, an out-of-memory kill) is started again with
the same name, port and settings after a backoff that doubles while it keeps dying (1 s,
2 s, 4 s ... 30 s) and resets once it has stayed up for a minute; a broker node that dies
is started again on its data directory, so the quorum queue and the streams keep what
they held.  Every restart is logged, and the restarted process is told how many times it
was restarted (``IMGQ_RESTART_COUNT``), which the status page shows.

A process that runs but is not alive is restarted too, as a Kubernetes liveness probe would
have it: each is probed every ``PROBE_PERIOD`` seconds (``ManagedProcess.liveness``: a
replica's health file, fresh and not stalled; a gateway's ``GET /healthz``), and
``FAILURE_THRESHOLD`` failures in a row get it SIGTERM, then SIGKILL ``KILL_GRACE`` seconds
later, then the restart above.  Readiness is never a reason: a broker outage makes every
service unready, and restarting them all would only add to it.  A process that has not
passed its first probe yet is starting (loading models, say) and is left alone for up to
``STARTUP_GRACE`` seconds.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from compose.broker import BrokerError, BrokerNode
from compose.stack import ManagedProcess, Stack

log = logging.getLogger("imgq.launch")

FIRST_BACKOFF = 1.0
MAX_BACKOFF = 30.0
# A process that stayed up this long is healthy again: its next crash waits FIRST_BACKOFF.
STABLE_AFTER = 60.0
PROBE_PERIOD = 2.0
FAILURE_THRESHOLD = 3
STARTUP_GRACE = 600.0
# SIGTERM first (a replica drains), then SIGKILL: one that fails its probe may not be able
# to stop by itself.
KILL_GRACE = 10.0


@dataclass
class _Watch:
    restarts: int = 0
    backoff: float = FIRST_BACKOFF
    started: float = field(default_factory=time.monotonic)
    restart_at: float | None = None
    # Liveness: passed a probe since it started; failures in a row; when to probe next; when
    # to SIGKILL one that was told to stop for failing them.
    live_once: bool = False
    failures: int = 0
    next_probe: float = 0.0
    kill_at: float | None = None


class Supervisor:
    def __init__(self, stack: Stack, nodes: Sequence[BrokerNode] = ()) -> None:
        self._stack = stack
        self._nodes = list(nodes)
        self._watches: dict[str, _Watch] = {}
        self.restarts: dict[str, int] = {}
        # Liveness failures that got a process restarted, by name (for tests and the log).
        self.unhealthy: dict[str, int] = {}

    def check(self) -> None:
        """One round: notice what died or is not alive, restart what is due.  Call it every
        second or so."""
        now = time.monotonic()
        for node in self._nodes:
            self._check_node(node, now)
        for proc in list(self._stack.processes):
            self._check_process(proc, now)

    def _due(self, name: str, alive: bool, now: float, what: str) -> bool:
        watch = self._watches.setdefault(name, _Watch())
        if alive:
            if now - watch.started > STABLE_AFTER:
                watch.backoff = FIRST_BACKOFF
            return False
        if watch.restart_at is None:
            watch.restart_at = now + watch.backoff
            log.error("%s died (%s); restarting it in %.0f s", name, what, watch.backoff)
            watch.backoff = min(watch.backoff * 2, MAX_BACKOFF)
        if now < watch.restart_at:
            return False
        watch.restart_at = None
        watch.restarts += 1
        watch.started = now
        watch.live_once = False
        watch.failures = 0
        watch.kill_at = None
        watch.next_probe = now
        self.restarts[name] = watch.restarts
        return True

    def _check_process(self, proc: ManagedProcess, now: float) -> None:
        code = proc.process.poll()
        if code is None:
            self._probe(proc, now)
        if not self._due(proc.name, code is None, now, f"exit code {code}"):
            return
        count = self.restarts[proc.name]
        self._stack.respawn(proc, IMGQ_RESTART_COUNT=str(count))
        log.warning("%s restarted (restart %d)", proc.name, count)

    def _probe(self, proc: ManagedProcess, now: float) -> None:
        watch = self._watches.setdefault(proc.name, _Watch())
        if watch.kill_at is not None:
            if now >= watch.kill_at:
                log.error(
                    "%s did not stop within %.0f s of SIGTERM: SIGKILL", proc.name, KILL_GRACE
                )
                proc.process.kill()
                watch.kill_at = None
            return
        if now < watch.next_probe:
            return
        watch.next_probe = now + PROBE_PERIOD
        problem = proc.liveness()
        if problem is None:
            watch.live_once = True
            watch.failures = 0
            return
        if not watch.live_once and now - watch.started < STARTUP_GRACE:
            return  # still starting
        watch.failures += 1
        if watch.failures < FAILURE_THRESHOLD:
            return
        self.unhealthy[proc.name] = self.unhealthy.get(proc.name, 0) + 1
        log.error(
            "%s failed %d liveness probes in a row (%s); stopping it to restart it",
            proc.name,
            watch.failures,
            problem,
        )
        proc.process.send_signal(signal.SIGTERM)
        watch.kill_at = now + KILL_GRACE

    def _check_node(self, node: BrokerNode, now: float) -> None:
        if not self._due(node.name, node.alive(), now, "broker node"):
            return
        try:
            node.start_again()
        except BrokerError as exc:
            log.error("broker node %s did not come back: %s", node.name, exc)
            return
        log.warning("broker node %s restarted (restart %d)", node.name, self.restarts[node.name])
