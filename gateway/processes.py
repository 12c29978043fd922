"""Several gateway processes on one port: ``IMGQ_GATEWAY_PROCESSES``.

One gateway process runs on one core.  With ``IMGQ_GATEWAY_PROCESSES=N`` (N > 1) the process
started is a small supervisor that forks N gateways, each a whole one: its own broker
connection, its own replay of the event log and its own store, exactly as N gateways behind a
proxy (any of them answers for any job).  Each listens on the same host and port through a
socket of its own with ``SO_REUSEPORT``, and the kernel spreads new connections among them.
``SO_REUSEPORT`` with that balancing is Linux's: elsewhere the setting is refused.

The supervisor binds each process' sockets itself before it forks it, so a port that cannot
be had stops the gateway at once, as a single process would; after the fork the supervisor
closes its copies, so a process that dies takes its socket with it and the kernel sends new
connections to the others.  It restarts a process that exits (as compose and Kubernetes would
restart a single gateway), after a pause that doubles while it keeps dying; on SIGTERM or
SIGINT it passes SIGTERM on, so every process answers its held long-polls and drains, and
waits for them.  A process whose supervisor dies is sent SIGTERM by the kernel.

What each process keeps is its own, as between gateways: the per-client shares and body
budgets (``gateway/shares.py``, ``gateway/bodies.py``), the long-polls it holds, its metrics
(``gateway/siblings.py`` answers a scrape, and the probes, for them all).
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess

    from gateway.settings import GatewaySettings

log = logging.getLogger(__name__)

# The listen backlog of each socket: aiohttp's own default.
BACKLOG: Final = 128
# A process that dies is started again after FIRST_BACKOFF, doubling to MAX_BACKOFF while it
# keeps dying; one that stayed up STABLE_AFTER seconds starts from FIRST_BACKOFF again.
FIRST_BACKOFF: Final = 1.0
MAX_BACKOFF: Final = 30.0
STABLE_AFTER: Final = 60.0
# How long the processes get to stop after SIGTERM: above a gateway's own shutdown (held
# long-polls answered at once, aiohttp's 5 s for open requests, the broker connection closed),
# and below the grace periods of compose (15 s) and Kubernetes (20 s, 5 of them preStop).
STOP_GRACE: Final = 12.0
_PR_SET_PDEATHSIG: Final = 1


@dataclass(frozen=True, slots=True)
class Worker:
    """One gateway process among ``count`` on the same port."""

    index: int
    count: int
    # A private folder (mode 0700) of the supervisor's: each process' Unix socket, on which
    # the others read its metrics.
    run_dir: Path

    def socket_path(self, index: int) -> Path:
        return self.run_dir / f"{index}.sock"

    @property
    def siblings(self) -> list[int]:
        return [i for i in range(self.count) if i != self.index]


# What runs in each process: serves until stopped, returns the exit status.
Serve = Callable[["GatewaySettings", Worker, Sequence[socket.socket]], int]


def listening_sockets(host: str, port: int) -> list[socket.socket]:
    """Sockets bound to every address ``host`` names, with SO_REUSEPORT, listening: what one
    process serves on (asyncio's create_server binds the same addresses)."""
    sockets: list[socket.socket] = []
    seen: set[tuple[int, object]] = set()
    try:
        for family, kind, proto, _, address in socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        ):
            if (family, address) in seen:
                continue
            seen.add((family, address))
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                # As asyncio does: an IPv6 socket takes IPv6 only, beside its IPv4 sibling.
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(BACKLOG)
            sock.setblocking(False)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


@dataclass
class _Slot:
    index: int
    process: BaseProcess | None = None
    started: float = 0.0
    backoff: float = FIRST_BACKOFF
    restart_at: float = 0.0
    restarts: int = 0


@dataclass
class Supervisor:
    settings: GatewaySettings
    serve: Serve
    count: int
    run_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="imgq-gateway-")))
    _slots: list[_Slot] = field(default_factory=list)
    _stopping: bool = False

    def run(self) -> int:
        """Start every process, keep them running until SIGTERM or SIGINT, stop them."""
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        # A signal wakes the wait below at once (the handler only sets a flag).
        previous_fd = signal.set_wakeup_fd(wake_w.fileno())
        previous = {sig: signal.signal(sig, self._on_signal) for sig in _STOP_SIGNALS}
        try:
            self._slots = [_Slot(i) for i in range(self.count)]
            for slot in self._slots:
                self._start(slot)
            log.info(
                "%d gateway processes on http://%s:%d/ (SO_REUSEPORT)",
                self.count,
                self.settings.host,
                self.settings.port,
            )
            try:
                while not self._stopping:
                    self._wait(wake_r)
            finally:
                self._stop_all()
            return 0
        finally:
            signal.set_wakeup_fd(previous_fd)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            wake_r.close()
            wake_w.close()
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stopping = True

    def _start(self, slot: _Slot) -> None:
        worker = Worker(slot.index, self.count, self.run_dir)
        sockets = listening_sockets(self.settings.host, self.settings.port)
        try:
            process = multiprocessing.get_context("fork").Process(
                target=_child,
                args=(self.serve, self.settings, worker, sockets, os.getpid()),
                name=f"gateway-{slot.index}",
            )
            process.start()
        finally:
            # The child has its own copies: when it exits, its sockets close with it.
            for sock in sockets:
                sock.close()
        slot.process = process
        slot.started = time.monotonic()
        log.info("gateway process %d started (pid %s)", slot.index, process.pid)

    def _wait(self, wake: socket.socket) -> None:
        now = time.monotonic()
        for slot in self._slots:
            if slot.process is None and slot.restart_at <= now:
                slot.restarts += 1
                try:
                    self._start(slot)
                except OSError as exc:  # its port taken meanwhile, say: try again later
                    self._again(slot, f"could not be started again ({exc})")
        pending = [slot.restart_at - now for slot in self._slots if slot.process is None]
        timeout = max(0.0, min(pending, default=1.0))
        running = {slot.process.sentinel: slot for slot in self._slots if slot.process}
        ready = multiprocessing.connection.wait([*running, wake], timeout)
        if wake in ready:
            while True:
                try:
                    if not wake.recv(512):
                        break
                except BlockingIOError:
                    break
        for sentinel in ready:
            if isinstance(sentinel, int) and sentinel in running:
                self._ended(running[sentinel])

    def _ended(self, slot: _Slot) -> None:
        process = slot.process
        assert process is not None
        process.join()
        slot.process = None
        if self._stopping:
            return
        if time.monotonic() - slot.started >= STABLE_AFTER:
            slot.backoff = FIRST_BACKOFF
        self._again(slot, f"(pid {process.pid}) exited with status {process.exitcode}")

    def _again(self, slot: _Slot, what: str) -> None:
        slot.restart_at = time.monotonic() + slot.backoff
        log.error(
            "gateway process %d %s; starting it again in %.0f s", slot.index, what, slot.backoff
        )
        slot.backoff = min(2 * slot.backoff, MAX_BACKOFF)

    def _stop_all(self) -> None:
        running = [slot.process for slot in self._slots if slot.process is not None]
        log.info("stopping %d gateway processes", len(running))
        for process in running:
            if process.pid is not None and process.is_alive():
                os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for process in running:
            process.join(max(0.0, deadline - time.monotonic()))
        for process in running:
            if process.is_alive():
                log.error("gateway process %s did not stop in time: SIGKILL", process.pid)
                process.kill()
                process.join()


_STOP_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT)


def supervise(settings: GatewaySettings, serve: Serve) -> int:
    """Run ``settings.processes`` gateway processes until stopped; the exit status."""
    return Supervisor(settings, serve, settings.processes).run()


def _child(
    serve: Serve,
    settings: GatewaySettings,
    worker: Worker,
    sockets: Sequence[socket.socket],
    parent: int,
) -> None:
    # What the supervisor set up for itself is not the child's: its signal handlers (the
    # gateway installs its own) and the descriptor its signals wake it through.
    signal.set_wakeup_fd(-1)
    for sig in _STOP_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    _die_with(parent)
    try:
        status = serve(settings, worker, sockets)
    finally:
        # The fork's exit skips the interpreter's, which would write the waiting log lines.
        logging.shutdown()
    sys.exit(status)


def _die_with(parent: int) -> None:
    """SIGTERM when the supervisor dies (Linux's PR_SET_PDEATHSIG): never left serving."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        log.warning("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
    if os.getppid() != parent:
        # The supervisor died before the call above took effect.
        os.kill(os.getpid(), signal.SIGTERM)
