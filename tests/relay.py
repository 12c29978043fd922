"""A TCP relay in front of a real server, to put a fault between it and its client.

The relay forwards bytes both ways, one thread per direction.  ``drop_next_answer()`` makes
it forward the next request whole but close the client's connection as soon as the server's
whole answer has come back, without passing it on: the server did the work, the client never
heard (what a dropped connection after the request looks like).  The answer it kept is in
``dropped``.  A relay is only listening between ``start()`` and ``close()``, so a service
pointed at its port before ``start()`` finds nothing there (connection refused).
"""

from __future__ import annotations

import contextlib
import socket
import threading

from compose.broker import free_port

_CHUNK = 65536


class Relay:
    def __init__(self, upstream_port: int, port: int | None = None) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.port = port or free_port()
        self.dropped: list[bytes] = []
        self._drop = threading.Event()
        self._listener: socket.socket | None = None
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def drop_next_answer(self) -> None:
        self._drop.set()

    def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed
            try:
                server = socket.create_connection(self.upstream, timeout=10)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._sockets += [client, server]
            drop = self._drop.is_set()
            self._drop.clear()
            threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, drop), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, drop: bool) -> None:
        answer = b""
        try:
            while data := source.recv(_CHUNK):
                if not drop:
                    sink.sendall(data)
                    continue
                answer += data
                if _complete(answer):
                    self.dropped.append(answer)
                    break
        except OSError:
            pass
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


def _complete(answer: bytes) -> bool:
    """Whether an HTTP answer with a Content-Length has arrived whole."""
    head, found, body = answer.partition(b"\r\n\r\n")
    if not found:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value.strip())
    return False


def body_of(answer: bytes) -> bytes:
    return answer.partition(b"\r\n\r\n")[2]
