"""What the client core asks its transport to do, one step at a time (no I/O here).

Every operation of the library (submit, wait, events, classify_many, ...) is written once,
in ``imgq.core`` and ``imgq.many``, as a generator that yields steps and is sent each step's
outcome.  ``imgq.Client`` performs them with blocking calls and ``imgq.AsyncClient`` awaits
them: the two differ only in how bytes move and time passes.  A step that fails is thrown
back into the generator as an ``ImgqClientError``, which is where the retry policy sits.

=============  ====================================================  ===================
step           the transport                                         and sends back
=============  ====================================================  ===================
``Request``    sends it (``stream``: opens it as the current stream)  a ``Response``
``ReadLine``   reads the next line of the current stream              bytes; b"" at end
``Sleep``      lets ``seconds`` pass                                  None
``Call``       runs ``fn`` (blocking work: reading files, hashing)    what ``fn`` returned
``Emit``       hands ``value`` to the caller (an iterator's item)      None
=============  ====================================================  ===================
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from imgq.config import Timeouts

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    # The path and query, below the client's base URL.
    path: str
    headers: Mapping[str, str]
    body: bytes | None
    timeouts: Timeouts
    # Safe to send again after it may have reached the server: every GET, and every POST
    # that carries an Idempotency-Key.  A DELETE is not (a second one forgets what the first
    # cancelled), so it is repeated only when the server certainly did nothing.
    idempotent: bool
    # An event stream: the answer's body is read line by line (``ReadLine``), with no total
    # timeout.
    stream: bool = False

    def describe(self) -> str:
        return f"{self.method} {self.path.split('?', 1)[0]}"


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    reason: str
    # Lower-case names; repeated headers joined with ", ".
    headers: Mapping[str, str]
    # Empty for an event stream that opened (its body is read with ReadLine).
    body: bytes
    # The X-Request-ID the request went out with.
    request_id: str


@dataclass(frozen=True, slots=True)
class ReadLine:
    pass


@dataclass(frozen=True, slots=True)
class Sleep:
    seconds: float


@dataclass(frozen=True, slots=True)
class Call:
    fn: Callable[[], Any]


@dataclass(frozen=True, slots=True)
class Emit:
    value: Any


Step = Request | ReadLine | Sleep | Call | Emit
# An operation: yields steps, is sent their outcomes, returns its answer.
Operation = Generator[Step, Any, T]
