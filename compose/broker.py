"""A private RabbitMQ node: its own data directory, its own ports, never the system service.

Debian's ``rabbitmq-server`` runs the node as the ``rabbitmq`` user when started as
root, so the data directory is handed to that user.  The node gets a private
epmd port too, so it neither needs nor disturbs a system-wide Erlang setup.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# Debian's wrapper, which switches to the rabbitmq user when run as root, and the real script.
_WRAPPER = Path("/usr/sbin/rabbitmq-server")
_SCRIPT = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
_AMQP_HEADER = b"AMQP\x00\x00\x09\x01"
INSTALL_HINT = "install Debian's RabbitMQ: sudo apt-get install -y rabbitmq-server"


class BrokerError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def rabbitmq_installed() -> bool:
    return _SCRIPT.exists()


def amqp_answers(port: int, timeout: float = 1.0) -> bool:
    """True once the node speaks AMQP (its listener opens only when boot is complete)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(_AMQP_HEADER)
            frame = sock.recv(1)
            return frame == b"\x01"  # a METHOD frame: Connection.Start
    except OSError:
        return False


@dataclass
class BrokerNode:
    base_dir: Path
    amqp_port: int
    epmd_port: int
    management_port: int | None
    process: subprocess.Popen[bytes]
    owns_dir: bool

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/"

    @property
    def log_file(self) -> Path:
        return self.base_dir / "node.log"

    def _terminate(self, timeout: float) -> None:
        # Signal the Erlang VM itself (its pid file) and wait for it: the wrapper and su
        # exit at once on SIGTERM while the VM is still shutting down.
        beam = _read_pid(self.base_dir / "node.pid")
        for pid in (beam, self.process.pid):
            if pid is not None:
                _signal(pid, signal.SIGTERM, group=pid == self.process.pid)
        deadline = time.monotonic() + timeout
        while beam is not None and _alive(beam) and time.monotonic() < deadline:
            time.sleep(0.1)
        if beam is not None and _alive(beam):
            _signal(beam, signal.SIGKILL)
        _signal(self.process.pid, signal.SIGKILL, group=True)
        self.process.wait(10)

    def stop(self, timeout: float = 30.0) -> None:
        self._terminate(timeout)
        # The private epmd daemon outlives the node; stop it too.
        subprocess.run(
            ["epmd", "-kill"],
            env={**os.environ, "ERL_EPMD_PORT": str(self.epmd_port)},
            capture_output=True,
            check=False,
        )
        if self.owns_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def restart(self, timeout: float = 90.0) -> None:
        """Stop and start the same node on the same ports and data (for failure tests)."""
        self._terminate(30.0)
        self.process = _spawn(self.base_dir, _env(self.base_dir, self.amqp_port, self.epmd_port))
        _wait_until_up(self, timeout)


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours counts as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _signal(pid: int, sig: signal.Signals, *, group: bool = False) -> None:
    try:
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _env(base: Path, amqp_port: int, epmd_port: int) -> dict[str, str]:
    return {
        **os.environ,
        "RABBITMQ_NODENAME": f"imgq-{amqp_port}@localhost",
        "RABBITMQ_NODE_PORT": str(amqp_port),
        "RABBITMQ_DIST_PORT": str(free_port()),
        "ERL_EPMD_PORT": str(epmd_port),
        "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
        "RABBITMQ_LOG_BASE": str(base / "log"),
        "RABBITMQ_LOGS": "-",
        "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
        "RABBITMQ_PID_FILE": str(base / "node.pid"),
        # The non-root path keeps its Erlang cookie in the node's own directory.
        "HOME": str(base),
    }


def _spawn(base: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    as_root = os.geteuid() == 0 and _WRAPPER.exists()
    command = [str(_WRAPPER if as_root else _SCRIPT)]
    with open(base / "node.log", "ab") as out:
        # A new session, so stop() can signal the wrapper, su and the Erlang VM together.
        return subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def _wait_until_up(node: BrokerNode, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if amqp_answers(node.amqp_port):
            return
        if node.process.poll() is not None:
            break
        time.sleep(0.25)
    tail = node.log_file.read_text(errors="replace")[-3000:] if node.log_file.exists() else ""
    node.stop()
    raise BrokerError(f"RabbitMQ did not start on port {node.amqp_port}; log tail:\n{tail}")


def start_node(*, management: bool = False, timeout: float = 90.0) -> BrokerNode:
    if not rabbitmq_installed():
        raise BrokerError(f"rabbitmq-server not found; {INSTALL_HINT}")
    base = Path(tempfile.mkdtemp(prefix="imgq-rabbitmq-"))
    amqp_port = free_port()
    management_port = free_port() if management else None
    lines = [
        f"listeners.tcp.default = 127.0.0.1:{amqp_port}",
        # Small private node: do not refuse publishes over the default 50 MB disk limit on
        # a nearly full /tmp, but keep a floor so a full disk still stops it cleanly.
        "disk_free_limit.absolute = 20MB",
    ]
    if management_port:
        lines += [f"management.tcp.port = {management_port}", "management.tcp.ip = 127.0.0.1"]
    (base / "rabbitmq.conf").write_text("\n".join(lines) + "\n")
    plugins = "[rabbitmq_management]." if management else "[]."
    (base / "enabled_plugins").write_text(plugins + "\n")
    if os.geteuid() == 0 and _WRAPPER.exists():
        # The node runs as the rabbitmq user and must own its data directory.
        user = pwd.getpwnam("rabbitmq")
        for path in [base, *base.iterdir()]:
            os.chown(path, user.pw_uid, user.pw_gid)
    epmd_port = free_port()
    node = BrokerNode(
        base_dir=base,
        amqp_port=amqp_port,
        epmd_port=epmd_port,
        management_port=management_port,
        process=_spawn(base, _env(base, amqp_port, epmd_port)),
        owns_dir=True,
    )
    _wait_until_up(node, timeout)
    log.info("RabbitMQ node up on port %d (data in %s)", amqp_port, base)
    return node
