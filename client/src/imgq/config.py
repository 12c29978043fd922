"""How long to wait and how often to try again: the two settings every request carries."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace

# What a gateway sends on an event stream at least this often (gateway/sse.py's keep-alive),
# so a stream's read timeout below it would cut healthy streams.
STREAM_KEEPALIVE = 15.0


def _positive(name: str, value: float) -> None:
    if not value > 0 or math.isinf(value):
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds allowed for each phase of one request (one try; retries get their own).

    ``connect``: to open the connection.  ``read``: the longest silence while the answer is
    coming.  ``total``: the whole request, answer included.  A long-poll adds the time it
    asked the server to hold it to ``read`` and ``total``, so its wait is never cut short;
    an event stream has no ``total`` (it lasts until the job is final) and a ``read`` of at
    least 20 s (the server's keep-alives come every 15 s)."""

    connect: float = 10.0
    read: float = 30.0
    total: float = 60.0

    def __post_init__(self) -> None:
        for name in ("connect", "read", "total"):
            _positive(name, getattr(self, name))

    @classmethod
    def of(cls, value: float | Timeouts | None, default: Timeouts) -> Timeouts:
        """A setting as given: a Timeouts, a number (every phase), or None (``default``)."""
        if value is None:
            return default
        if isinstance(value, Timeouts):
            return value
        return cls(float(value), float(value), float(value))

    def holding(self, seconds: float) -> Timeouts:
        """For a request the server holds up to ``seconds`` (a long-poll)."""
        return replace(self, read=self.read + seconds, total=self.total + seconds)


@dataclass(frozen=True, slots=True)
class Retries:
    """When to send a request again: after ``429``, ``503`` (and a proxy's ``502``/``504``),
    a connection that could not be made or dropped, or a timeout; at most ``max_retries``
    times, after exponential backoff with jitter, or after the server's ``Retry-After``.

    The defaults ride out a gateway restart or a broker failover (about 40 s of tries).
    A ``Retry-After`` above ``max_retry_after`` is not waited for: the error is raised."""

    max_retries: int = 8
    initial_delay: float = 0.5
    max_delay: float = 8.0
    max_retry_after: float = 60.0

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be 0 or more, got {self.max_retries!r}")
        for name in ("initial_delay", "max_delay", "max_retry_after"):
            _positive(name, getattr(self, name))

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """Seconds before try ``attempt + 2``: doubling from ``initial_delay`` up to
        ``max_delay``, each drawn from its upper half so clients that failed together do not
        come back together."""
        ceiling = min(self.max_delay, self.initial_delay * 2.0 ** min(attempt, 32))
        return ceiling * rng.uniform(0.5, 1.0)

    def after_retry_after(self, retry_after: float, rng: random.Random) -> float | None:
        """Seconds to wait for a server that said ``Retry-After``: never sooner, a little
        later at random (spread), or None when that is longer than we wait."""
        if retry_after > self.max_retry_after:
            return None
        return retry_after * rng.uniform(1.0, 1.2)
