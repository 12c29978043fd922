"""Private RabbitMQ nodes: their own data directories and ports, never the system service.

Debian's ``rabbitmq-server`` runs the node as the ``rabbitmq`` user when started as
root, so the data directory is handed to that user.  The node gets a private
epmd port too, so it neither needs nor disturbs a system-wide Erlang setup.

``start_cluster(3)`` starts three such nodes that share one private epmd port and one
Erlang cookie, and joins the second and third to the first (``rabbitmqctl join_cluster``):
a real cluster on one machine, for the failover tests and ``scripts/up --broker-nodes 3``.
"""

from __future__ import annotations

import logging
import os
import pwd
import secrets
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
_CTL = Path("/usr/lib/rabbitmq/bin/rabbitmqctl")
_AMQP_HEADER = b"AMQP\x00\x00\x09\x01"
MAX_MESSAGE_BYTES = 16 << 20
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
    # A cluster member leaves the shared epmd daemon running for the other nodes.
    owns_epmd: bool = True

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/"

    @property
    def name(self) -> str:
        """The Erlang node name, as RabbitMQ reports it (``rabbitmqctl cluster_status``)."""
        return node_name(self.amqp_port)

    def alive(self) -> bool:
        beam = _read_pid(self.base_dir / "node.pid")
        return beam is not None and _alive(beam)

    def kill(self) -> None:
        """SIGKILL the Erlang VM: a crash, as far as the rest of the cluster can tell."""
        beam = _read_pid(self.base_dir / "node.pid")
        if beam is not None:
            _signal(beam, signal.SIGKILL)
        _signal(self.process.pid, signal.SIGKILL, group=True)
        self.process.wait(10)

    def freeze(self) -> None:
        """SIGSTOP the VM: alive to the kernel, silent to its peers and clients."""
        beam = _read_pid(self.base_dir / "node.pid")
        if beam is not None:
            _signal(beam, signal.SIGSTOP)

    def thaw(self) -> None:
        beam = _read_pid(self.base_dir / "node.pid")
        if beam is not None:
            _signal(beam, signal.SIGCONT)

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
        if self.owns_epmd:
            _kill_epmd(self.epmd_port)
        if self.owns_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def restart(self, timeout: float = 90.0) -> None:
        """Stop and start the same node on the same ports and data (for failure tests)."""
        self.shut_down()
        self.start_again(timeout)

    def shut_down(self, timeout: float = 30.0) -> None:
        """Stop the node as an operator would (SIGTERM), keeping its ports and data for
        ``start_again``: an outage."""
        self._terminate(timeout)

    def start_again(self, timeout: float = 90.0) -> None:
        """Start a stopped or killed node again: same name, ports and data, so a cluster
        member rejoins its cluster by itself."""
        self.process = _spawn(self.base_dir, _env(self.base_dir, self.amqp_port, self.epmd_port))
        _wait_until_up(self, timeout, first_start=False)


def node_name(amqp_port: int) -> str:
    return f"imgq-{amqp_port}@localhost"


def _kill_epmd(epmd_port: int) -> None:
    # The private epmd daemon outlives the nodes; stop it too.
    subprocess.run(
        ["epmd", "-kill"],
        env={**os.environ, "ERL_EPMD_PORT": str(epmd_port)},
        capture_output=True,
        check=False,
    )


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
        "RABBITMQ_NODENAME": node_name(amqp_port),
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
    command = [str(_WRAPPER if _runs_as_rabbitmq() else _SCRIPT)]
    with open(base / "node.log", "ab") as out:
        # A new session, so stop() can signal the wrapper, su and the Erlang VM together.
        return subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def _wait_until_up(node: BrokerNode, timeout: float, *, first_start: bool = True) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if amqp_answers(node.amqp_port):
            return
        if node.process.poll() is not None:
            break
        time.sleep(0.25)
    tail = node.log_file.read_text(errors="replace")[-3000:] if node.log_file.exists() else ""
    if first_start:
        node.stop()
    else:
        node._terminate(10)  # keep the data: it is what a restart is for
    raise BrokerError(f"RabbitMQ did not start on port {node.amqp_port}; log tail:\n{tail}")


def start_node(*, management: bool = False, timeout: float = 90.0) -> BrokerNode:
    node = _prepare_node(management=management, epmd_port=free_port(), cookie=None)
    _wait_until_up(node, timeout)
    log.info("RabbitMQ node up on port %d (data in %s)", node.amqp_port, node.base_dir)
    return node


def _prepare_node(*, management: bool, epmd_port: int, cookie: str | None) -> BrokerNode:
    """Write a node's configuration and spawn it; the caller waits for it to come up."""
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
        # Uploads are capped at 10 MiB by the gateway, but AMQP producers reach the broker
        # directly: refuse anything over 16 MiB (headroom for headers) at the broker itself.
        f"max_message_size = {MAX_MESSAGE_BYTES}",
    ]
    if management_port:
        lines += [f"management.tcp.port = {management_port}", "management.tcp.ip = 127.0.0.1"]
    (base / "rabbitmq.conf").write_text("\n".join(lines) + "\n")
    plugins = "[rabbitmq_management]." if management else "[]."
    (base / "enabled_plugins").write_text(plugins + "\n")
    if cookie is not None and not _runs_as_rabbitmq():
        # Cluster members must share the Erlang cookie; Erlang insists on mode 400.
        cookie_file = base / ".erlang.cookie"
        cookie_file.write_text(cookie)
        cookie_file.chmod(0o400)
    if _runs_as_rabbitmq():
        # The node runs as the rabbitmq user and must own its data directory.
        user = pwd.getpwnam("rabbitmq")
        for path in [base, *base.iterdir()]:
            os.chown(path, user.pw_uid, user.pw_gid)
    return BrokerNode(
        base_dir=base,
        amqp_port=amqp_port,
        epmd_port=epmd_port,
        management_port=management_port,
        process=_spawn(base, _env(base, amqp_port, epmd_port)),
        owns_dir=True,
        owns_epmd=cookie is None,
    )


def _runs_as_rabbitmq() -> bool:
    return os.geteuid() == 0 and _WRAPPER.exists()


def _node_home(base: Path) -> Path:
    """Where a node keeps its Erlang cookie.  Started as root, Debian's wrapper runs it as the
    rabbitmq user through ``su``, which sets HOME to that user's home: every such node uses
    the package's cookie (so they all share it).  Otherwise HOME is the node's directory."""
    return Path(pwd.getpwnam("rabbitmq").pw_dir) if _runs_as_rabbitmq() else base


@dataclass
class BrokerCluster:
    """Nodes clustered together; any of them serves clients, queues replicate across them."""

    nodes: list[BrokerNode]

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def ctl(self, *args: str, node: BrokerNode | None = None, timeout: float = 60.0) -> str:
        """``rabbitmqctl`` against a member (the first live one unless named)."""
        target = node or next((n for n in self.nodes if n.alive()), self.nodes[0])
        return _ctl(target, *args, timeout=timeout)

    def stop(self) -> None:
        for node in self.nodes:
            node.thaw()  # a frozen node cannot shut down
            node.stop()
        if self.nodes:
            _kill_epmd(self.nodes[0].epmd_port)


def _ctl(node: BrokerNode, *args: str, timeout: float = 60.0) -> str:
    env = {
        **os.environ,
        "ERL_EPMD_PORT": str(node.epmd_port),
        # The CLI reads the cookie from $HOME/.erlang.cookie, so give it the node's HOME.
        "HOME": str(_node_home(node.base_dir)),
    }
    result = subprocess.run(
        [str(_CTL), "-n", node.name, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise BrokerError(
            f"rabbitmqctl {' '.join(args)} on {node.name} failed: {result.stderr or result.stdout}"
        )
    return result.stdout


def start_cluster(
    size: int = 3, *, management: bool = False, timeout: float = 120.0
) -> BrokerCluster:
    """``size`` private nodes in one cluster.  The nodes boot in parallel, then the second
    and later join the first (stop_app, join_cluster, start_app)."""
    epmd_port = free_port()
    cookie = secrets.token_hex(20)
    nodes: list[BrokerNode] = []
    try:
        for index in range(size):
            nodes.append(
                _prepare_node(
                    management=management and index == 0, epmd_port=epmd_port, cookie=cookie
                )
            )
        for node in nodes:
            _wait_until_up(node, timeout)
        first = nodes[0]
        for node in nodes[1:]:
            _ctl(node, "stop_app")
            _ctl(node, "join_cluster", first.name)
            _ctl(node, "start_app")
            _wait_until_up(node, timeout)
    except BaseException:
        BrokerCluster(nodes).stop()
        raise
    log.info("RabbitMQ cluster of %d nodes up on ports %s", size, [n.amqp_port for n in nodes])
    return BrokerCluster(nodes)
