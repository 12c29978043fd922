"""Keep the local deployment up, as compose's ``restart: unless-stopped`` would.

A replica or gateway that exits (a crash, an out-of-memory kill) is started again with
the same name, port and settings after a backoff that doubles while it keeps dying (1 s,
2 s, 4 s ... 30 s) and resets once it has stayed up for a minute; a broker node that dies
is started again on its data directory, so the quorum queue and the streams keep what
they held.  Every restart is logged, and the restarted process is told how many times it
was restarted (``IMGQ_RESTART_COUNT``), which the status page shows.
"""

from __future__ import annotations

import logging
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


@dataclass
class _Watch:
    restarts: int = 0
    backoff: float = FIRST_BACKOFF
    started: float = field(default_factory=time.monotonic)
    restart_at: float | None = None


class Supervisor:
    def __init__(self, stack: Stack, nodes: Sequence[BrokerNode] = ()) -> None:
        self._stack = stack
        self._nodes = list(nodes)
        self._watches: dict[str, _Watch] = {}
        self.restarts: dict[str, int] = {}

    def check(self) -> None:
        """One round: notice what died, restart what is due.  Call it every second or so."""
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
        self.restarts[name] = watch.restarts
        return True

    def _check_process(self, proc: ManagedProcess, now: float) -> None:
        code = proc.process.poll()
        if not self._due(proc.name, code is None, now, f"exit code {code}"):
            return
        count = self.restarts[proc.name]
        self._stack.respawn(proc, IMGQ_RESTART_COUNT=str(count))
        log.warning("%s restarted (restart %d)", proc.name, count)

    def _check_node(self, node: BrokerNode, now: float) -> None:
        if not self._due(node.name, node.alive(), now, "broker node"):
            return
        try:
            node.start_again()
        except BrokerError as exc:
            log.error("broker node %s did not come back: %s", node.name, exc)
            return
        log.warning("broker node %s restarted (restart %d)", node.name, self.restarts[node.name])
