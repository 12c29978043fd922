"""The blocking transport (standard library only): ``Request`` in, ``Response`` out.

Connections are kept alive and reused (a pool of idle ones, safe across threads), which is
what lets one process keep a gateway busy.  Each of ``imgq.Timeouts`` is enforced: the
connect on the socket's connect, the read on every wait for bytes, the total by shrinking
those waits as its deadline nears.  Every failure becomes ``Unreachable`` or ``TimedOut``.
The module is not named ``http`` so that it can never shadow the standard library's package.
"""

from __future__ import annotations

import http.client
import math
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Iterable

from imgq.errors import TimedOut, Unreachable
from imgq.steps import Request, Response

# Idle connections kept for reuse; more are opened when more requests run at once.
POOL_SIZE = 32
_READ_CHUNK = 64 * 1024
# What a kept-alive connection the server has meanwhile closed looks like: sent again once,
# on a new connection, when the request is safe to repeat.
_STALE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)


class _Stale(Exception):
    pass


class SyncTransport:
    def __init__(self, base_url: str) -> None:
        parts = urllib.parse.urlsplit(base_url)
        self.base_url = base_url.rstrip("/")
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port
        self._prefix = parts.path.rstrip("/")
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._context = ssl.create_default_context() if self._https else None

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def send(self, request: Request) -> Response:
        conn, reused = self._take()
        try:
            return self._exchange(conn, reused, request)
        except _Stale:
            return self._exchange(self._new(), False, request)

    def open(self, request: Request) -> SyncStream:
        """An event stream: its own connection, read line by line until it ends."""
        conn = self._new()
        deadline = math.inf  # a stream has no total timeout
        try:
            self._connect(conn, request)
            response = self._start(conn, False, request, deadline)
        except BaseException:
            conn.close()
            raise
        headers = _headers(response.getheaders())
        request_id = request.headers.get("X-Request-ID", "")
        if response.status != 200:
            body = self._body(conn, response, request, deadline)
            conn.close()
            answer = Response(response.status, response.reason, headers, body, request_id)
            return SyncStream(self, answer)
        stream = SyncStream(self, Response(200, response.reason, headers, b"", request_id))
        stream.attach(conn, response, request.timeouts.read)
        return stream

    # -- one request on one connection ----------------------------------------------------

    def _exchange(
        self, conn: http.client.HTTPConnection, reused: bool, request: Request
    ) -> Response:
        deadline = time.monotonic() + request.timeouts.total
        try:
            if not reused:
                self._connect(conn, request)
            response = self._start(conn, reused, request, deadline)
            body = self._body(conn, response, request, deadline)
        except BaseException:
            conn.close()
            raise
        if response.will_close:
            conn.close()
        else:
            self._give_back(conn)
        return Response(
            response.status,
            response.reason,
            _headers(response.getheaders()),
            body,
            request.headers.get("X-Request-ID", ""),
        )

    def _connect(self, conn: http.client.HTTPConnection, request: Request) -> None:
        conn.timeout = request.timeouts.connect
        try:
            conn.connect()
        except TimeoutError:
            raise TimedOut(self.base_url, "connect", request.timeouts.connect) from None
        except (OSError, http.client.HTTPException) as exc:
            raise Unreachable(self.base_url, describe(exc), sent=False) from None

    def _start(
        self,
        conn: http.client.HTTPConnection,
        reused: bool,
        request: Request,
        deadline: float,
    ) -> http.client.HTTPResponse:
        """Send the request and read the answer's status line and headers."""
        phase = self._limit(conn, request, deadline)
        try:
            conn.request(
                request.method,
                self._prefix + request.path,
                body=request.body,
                headers=dict(request.headers),
            )
            return conn.getresponse()
        except _STALE as exc:
            if reused and request.idempotent:
                raise _Stale from None
            raise Unreachable(self.base_url, describe(exc)) from None
        except TimeoutError:
            raise self._timed_out(request, phase) from None
        except (OSError, http.client.HTTPException) as exc:
            raise Unreachable(self.base_url, describe(exc)) from None

    def _body(
        self,
        conn: http.client.HTTPConnection,
        response: http.client.HTTPResponse,
        request: Request,
        deadline: float,
    ) -> bytes:
        chunks: list[bytes] = []
        phase = "read"
        try:
            while True:
                phase = self._limit(conn, request, deadline)
                chunk = response.read1(_READ_CHUNK)
                if not chunk:
                    # Marks the answer complete: the connection takes its next request.
                    response.close()
                    return b"".join(chunks)
                chunks.append(chunk)
        except TimeoutError:
            raise self._timed_out(request, phase) from None
        except (OSError, http.client.HTTPException) as exc:
            raise Unreachable(self.base_url, describe(exc)) from None

    def _limit(self, conn: http.client.HTTPConnection, request: Request, deadline: float) -> str:
        """Bound the next wait for bytes by the read timeout, or by what is left of the total
        when that is less; returns which of the two it is."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimedOut(self.base_url, "total", request.timeouts.total)
        phase, seconds = ("read", request.timeouts.read)
        if left < seconds and not request.stream:
            phase, seconds = ("total", left)
        if conn.sock is not None:
            conn.sock.settimeout(seconds)
        return phase

    def _timed_out(self, request: Request, phase: str) -> TimedOut:
        if phase == "total":
            return TimedOut(self.base_url, "total", request.timeouts.total)
        return TimedOut(self.base_url, "read", request.timeouts.read)

    # -- the pool ---------------------------------------------------------------------------

    def _take(self) -> tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
        return self._new(), False

    def _give_back(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if len(self._idle) < POOL_SIZE:
                self._idle.append(conn)
                return
        conn.close()

    def _new(self) -> http.client.HTTPConnection:
        if self._https:
            return http.client.HTTPSConnection(self._host, self._port, context=self._context)
        return http.client.HTTPConnection(self._host, self._port)


class SyncStream:
    """An open event stream: the answer's status and headers, then its lines."""

    def __init__(self, transport: SyncTransport, response: Response) -> None:
        self.response = response
        self._transport = transport
        self._conn: http.client.HTTPConnection | None = None
        self._body: http.client.HTTPResponse | None = None
        self._read_timeout = 0.0

    def attach(
        self, conn: http.client.HTTPConnection, body: http.client.HTTPResponse, read: float
    ) -> None:
        self._conn, self._body, self._read_timeout = conn, body, read
        if conn.sock is not None:
            conn.sock.settimeout(read)

    def readline(self) -> bytes:
        """The next line, b"" once the stream has ended."""
        if self._body is None:
            return b""
        try:
            return self._body.readline()
        except TimeoutError:
            raise TimedOut(self._transport.base_url, "read", self._read_timeout) from None
        except (OSError, http.client.HTTPException) as exc:
            raise Unreachable(self._transport.base_url, describe(exc)) from None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = self._body = None


def _headers(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, value in pairs:
        key = name.lower()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return headers


def describe(reason: object) -> str:
    """A connection failure in a few words."""
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused (is the gateway running?)"
    if isinstance(reason, socket.gaierror):
        return f"host not found ({reason.strerror})"
    if isinstance(reason, TimeoutError):
        return "no answer in time"
    if isinstance(reason, http.client.RemoteDisconnected):
        return "the server closed the connection without answering"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return str(reason) or type(reason).__name__
