"""Bring the whole system up locally: ``python -m compose.launch``.

A private RabbitMQ node (or ``--broker-nodes 3``: a cluster of three), the gateway and
classifier replicas (two by default), then the page's URL.  While it runs it supervises
them as compose's ``restart: unless-stopped`` and Kubernetes' liveness probes would
(compose/supervise.py): whatever dies, or runs without being alive (a replica stalled, a
gateway that does not answer ``/healthz``), is started again; what is only unready (the broker
is down) is left alone.  Only Ctrl-C (or SIGTERM) stops everything this started.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import tempfile
import threading
from pathlib import Path
from types import FrameType

from compose.broker import BrokerCluster, BrokerError, start_cluster, start_node
from compose.stack import Stack, threads_per_replica, wait_http_ok, wait_replicas_online
from compose.supervise import Supervisor
from shared.config_reference import package_version

log = logging.getLogger("imgq.launch")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m compose.launch", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    parser.add_argument("--replicas", type=int, default=2, help="classifier replicas (default 2)")
    parser.add_argument("--port", type=int, default=8080, help="gateway HTTP port (default 8080)")
    parser.add_argument("--host", default="127.0.0.1", help="gateway bind address")
    parser.add_argument(
        "--gateway-processes",
        type=int,
        default=None,
        help="gateway processes on the port (IMGQ_GATEWAY_PROCESSES; default: its setting, 1)",
    )
    parser.add_argument("--management", action="store_true", help="enable RabbitMQ's management UI")
    parser.add_argument(
        "--broker-nodes",
        type=int,
        default=1,
        help="RabbitMQ nodes, clustered when more than 1 (default 1; 3 tolerates one failure)",
    )
    args = parser.parse_args(argv)
    if args.broker_nodes < 1:
        parser.error("--broker-nodes must be at least 1")
    if args.gateway_processes is not None and args.gateway_processes < 1:
        parser.error("--gateway-processes must be at least 1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [launch] %(message)s")

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    try:
        if args.broker_nodes > 1:
            brokers = start_cluster(args.broker_nodes, management=args.management)
        else:
            brokers = BrokerCluster([start_node(management=args.management)])
    except BrokerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    node = brokers.nodes[0]
    log_dir = Path(tempfile.mkdtemp(prefix="imgq-logs-"))
    urls = tuple(brokers.urls) if len(brokers.nodes) > 1 else ()
    stack = Stack(node.url, log_dir, broker_urls=urls)
    supervisor = Supervisor(stack, brokers.nodes)
    try:
        threads = threads_per_replica(args.replicas)
        log.info(
            "broker %s; %d replica(s) x %d inference thread(s)",
            ", ".join(brokers.urls),
            args.replicas,
            threads,
        )
        for i in range(args.replicas):
            stack.start_replica(f"replica-{i + 1}", threads=threads)
        processes = args.gateway_processes
        gateway, base_url = stack.start_gateway(
            port=args.port,
            host=args.host,
            env={} if processes is None else {"IMGQ_GATEWAY_PROCESSES": str(processes)},
        )
        wait_http_ok(f"{base_url}/readyz", 60, gateway)
        wait_replicas_online(base_url, args.replicas, 180)
        if node.management_port:
            log.info("RabbitMQ management UI: http://127.0.0.1:%d/", node.management_port)
        log.info("logs in %s", log_dir)
        print(f"\nimgq is up: open http://{args.host}:{args.port}/  (Ctrl-C stops everything)\n")
        sys.stdout.flush()
        while not stop.wait(0.5):
            supervisor.check()
    except (TimeoutError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        log.info("stopping")
        stack.stop()
        brokers.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
