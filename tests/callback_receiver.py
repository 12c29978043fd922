"""A callback receiver for the tests: a real HTTP server on loopback, in the test process.

It records every request it gets (path, headers, body, when) and answers each path as the test
planned: a list of statuses to answer in turn (then 200), and optionally the first request
held unanswered until the test lets it go.  Tests wait on it for a condition, never for a time.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    # The connection's port on the sender's side: which process sent it.
    client_port: int
    # What it was answered, once answered (None while held, or if the answer failed).
    status: int | None = None

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def delivery(self) -> str:
        return self.headers["imgq-delivery"]


@dataclass
class _Plan:
    statuses: list[int] = field(default_factory=list)
    hold_first: bool = False
    release: threading.Event = field(default_factory=threading.Event)


class CallbackReceiver:
    def __init__(self) -> None:
        self.received: list[Received] = []
        self._plans: dict[str, _Plan] = {}
        self._changed = threading.Condition()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def plan(self, path: str, statuses: list[int] | None = None, hold_first: bool = False) -> str:
        """How to answer ``path``; returns its URL."""
        self._plans[path] = _Plan(list(statuses or []), hold_first)
        return self.base_url + path

    def release(self, path: str) -> None:
        self._plans[path].release.set()

    def at(self, path: str) -> list[Received]:
        with self._changed:
            return [r for r in self.received if r.path == path]

    def wait_for(
        self, condition: Callable[[list[Received]], bool], path: str, timeout: float = 60.0
    ) -> list[Received]:
        """The requests to ``path`` once ``condition`` holds for them (else AssertionError)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                got = [r for r in self.received if r.path == path]
                if condition(got):
                    return got
                remaining = deadline - time.monotonic()
                assert remaining > 0, f"{path}: only {[(r.status, r.headers) for r in got]}"
                self._changed.wait(remaining)

    @contextmanager
    def running(self) -> Iterator[CallbackReceiver]:
        self._thread.start()
        try:
            yield self
        finally:
            for plan in self._plans.values():
                plan.release.set()
            self._server.shutdown()
            self._server.server_close()

    def _record(self, received: Received) -> bool:
        """Keep ``received``; whether it is the first request to its path."""
        with self._changed:
            first = not any(r.path == received.path for r in self.received)
            self.received.append(received)
            self._changed.notify_all()
            return first

    def _answered(self, received: Received, status: int) -> None:
        with self._changed:
            received.status = status
            self._changed.notify_all()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                received = Received(
                    self.path,
                    {k.lower(): v for k, v in self.headers.items()},
                    body,
                    time.monotonic(),
                    self.client_address[1],
                )
                plan = receiver._plans.get(self.path, _Plan())
                if receiver._record(received) and plan.hold_first:
                    plan.release.wait()
                    if _peer_closed(self.connection):
                        return  # its sender died while it was held: never answered
                status = plan.statuses.pop(0) if plan.statuses else 200
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:
                    return  # the sender went away meanwhile (killed): nothing was answered
                receiver._answered(received, status)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


def _peer_closed(connection: socket.socket) -> bool:
    """Whether the other end has closed the connection (sending to it could still succeed)."""
    try:
        return connection.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
