"""Bring the whole system up locally: ``python -m compose.launch``.

A private RabbitMQ node, the gateway and classifier replicas (two by default),
then the page's URL.  Ctrl-C (or SIGTERM) stops everything this started.
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

from compose.broker import BrokerError, start_node
from compose.stack import Stack, threads_per_replica, wait_http_ok, wait_replicas_online

log = logging.getLogger("imgq.launch")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m compose.launch", description=__doc__)
    parser.add_argument("--replicas", type=int, default=2, help="classifier replicas (default 2)")
    parser.add_argument("--port", type=int, default=8080, help="gateway HTTP port (default 8080)")
    parser.add_argument("--host", default="127.0.0.1", help="gateway bind address")
    parser.add_argument("--management", action="store_true", help="enable RabbitMQ's management UI")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [launch] %(message)s")

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    try:
        node = start_node(management=args.management)
    except BrokerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    log_dir = Path(tempfile.mkdtemp(prefix="imgq-logs-"))
    stack = Stack(node.url, log_dir)
    try:
        threads = threads_per_replica(args.replicas)
        log.info("broker %s; %d replica(s) x %d torch thread(s)", node.url, args.replicas, threads)
        for i in range(args.replicas):
            stack.start_replica(f"replica-{i + 1}", threads=threads)
        gateway, base_url = stack.start_gateway(port=args.port, host=args.host)
        wait_http_ok(f"{base_url}/readyz", 60, gateway)
        wait_replicas_online(base_url, args.replicas, 180)
        if node.management_port:
            log.info("RabbitMQ management UI: http://127.0.0.1:%d/", node.management_port)
        log.info("logs in %s", log_dir)
        print(f"\nimgq is up: open http://{args.host}:{args.port}/  (Ctrl-C stops everything)\n")
        sys.stdout.flush()
        while not stop.wait(1.0):
            for proc in stack.processes:
                if not proc.alive():
                    log.error("%s exited (code %s); stopping", proc.name, proc.process.returncode)
                    stop.set()
    except (TimeoutError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        log.info("stopping")
        stack.stop()
        node.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
