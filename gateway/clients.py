"""Per-client fairness: who a request comes from, and the shares no one client may exceed.

A client is the token it authenticated with (a hash of it: the token itself is never kept)
or, on an open gateway, its address.  Each may have only so many jobs in flight (its share of
the fleet, ``gateway/shares.py``), only so many request-body bytes on the gateway at once
(``gateway/bodies.py``), and only so many long-polls and event streams open; optionally also
a rate of submissions (a token bucket, off by default: a rate holds a client alone below what
the fleet could do for it).  So one client (or one script in a loop) cannot take the gateway's
capacity from the others: beyond its share it gets a 429 with Retry-After.  Behind a reverse
proxy every client has the proxy's address; the proxy's own per-address limits
(compose/nginx.conf) do that part there.
"""

from __future__ import annotations

import hashlib
import ipaddress
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import NoReturn

from shared.errors import SettingsError, TooManyRequests, retry_after_header
from shared.settings import GATEWAY, Environ, Variable, env_float, env_int, env_list, variable

# Buckets idle this long are full again anyway: forgetting them bounds the memory a flood of
# distinct addresses can take.
_IDLE_SECONDS = 300.0
_MAX_TRACKED = 100_000


_RATE = variable(
    "IMGQ_CLIENT_RATE",
    0.0,
    GATEWAY,
    "submissions a second one client (token, else address) may make (then 429); `0` = no "
    "rate: `IMGQ_CLIENT_JOBS` shares the fleet instead",
)
_BURST = variable("IMGQ_CLIENT_BURST", 100, GATEWAY, "how many submissions one client may burst")
_WAITS = variable(
    "IMGQ_CLIENT_WAITS",
    200,
    GATEWAY,
    "long-polls and event streams one client may hold open at once (then 429)",
)
_JOBS = variable(
    "IMGQ_CLIENT_JOBS",
    256,
    GATEWAY,
    "jobs one client may have queued or running through this gateway while it is the only one "
    "submitting; with others, one per replica online shared among them (then 429); "
    "`0` = no limit",
)
_BODY_BYTES = variable(
    "IMGQ_CLIENT_BODY_BYTES",
    128 * 1024 * 1024,
    GATEWAY,
    "request-body bytes one client may have on the gateway at once, all its requests together "
    "(then 429); at least `IMGQ_BATCH_MAX_BYTES`",
    shown="`134217728` (128 MiB)",
)
_TRUSTED_PROXIES: Variable[tuple[str, ...]] = variable(
    "IMGQ_TRUSTED_PROXIES",
    (),
    GATEWAY,
    "addresses or networks (CIDR) of reverse proxies whose `X-Forwarded-For` names the client "
    "for the per-client shares; unset = the peer address is the client",
)
_STREAM_SECONDS = variable(
    "IMGQ_STREAM_SECONDS", 600.0, GATEWAY, "longest life of one event stream, seconds"
)


@dataclass(frozen=True, slots=True)
class ClientLimits:
    rate: float = _RATE.default
    burst: int = _BURST.default
    waits: int = _WAITS.default
    # 256 jobs in flight: four of the largest batches (IMGQ_BATCH_MAX_IMAGES), as many as the
    # imgq library keeps in flight, so a client sending batches back to back has the next one
    # accepted while the earlier ones run; a client refused waits a whole second (Retry-After),
    # and this is more than a second of even a large fleet's work.  A client that comes later
    # waits behind at most these, once; then the share is divided (gateway/shares.py).
    jobs: int = _JOBS.default
    # Two of the largest batches (IMGQ_BATCH_MAX_BYTES), or a dozen single uploads, at once: a
    # page or the command line never needs more, and fifty slow uploads from one client hold
    # no more memory than this.
    body_bytes: int = _BODY_BYTES.default
    stream_seconds: float = _STREAM_SECONDS.default
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    @classmethod
    def from_env(cls, env: Environ) -> ClientLimits:
        proxies = env_list(env, _TRUSTED_PROXIES.name, _TRUSTED_PROXIES.default)
        try:
            networks = tuple(ipaddress.ip_network(p, strict=False) for p in proxies)
        except ValueError as exc:
            raise SettingsError(f"{_TRUSTED_PROXIES.name}: {exc}") from None
        return cls(
            rate=env_float(env, _RATE.name, _RATE.default),
            burst=env_int(env, _BURST.name, _BURST.default, minimum=1),
            waits=env_int(env, _WAITS.name, _WAITS.default, minimum=1),
            jobs=env_int(env, _JOBS.name, _JOBS.default, minimum=0),
            body_bytes=env_int(env, _BODY_BYTES.name, _BODY_BYTES.default, minimum=1),
            stream_seconds=env_float(env, _STREAM_SECONDS.name, _STREAM_SECONDS.default, minimum=1),
            trusted_proxies=networks,
        )

    def client_address(self, peer: str | None, forwarded_for: str | None) -> str:
        """The client's address: the peer's, unless the peer is a trusted proxy, whose
        ``X-Forwarded-For`` then names it (its last entry: the one that proxy added)."""
        peer = peer or "unknown"
        if not forwarded_for or not self.trusted_proxies:
            return peer
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return peer
        if not any(address in network for network in self.trusted_proxies):
            return peer
        return forwarded_for.rsplit(",", 1)[-1].strip() or peer


def owner_of(token: bytes) -> str:
    """Who owns the jobs a token submits: a hash of the token, never the token itself."""
    return hashlib.sha256(b"imgq-owner\\0" + token).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is asking, as the per-client shares, budgets and long-poll counts tell callers
    apart (not to be mistaken for the ``imgq`` library's ``Client``)."""

    # A hash of the bearer token on a gateway with tokens; None on an open gateway, where
    # every job is everyone's (as the README says).
    owner: str | None
    address: str

    @property
    def key(self) -> str:
        return f"token:{self.owner}" if self.owner else f"address:{self.address}"


@dataclass
class _Bucket:
    tokens: float
    at: float


class RateLimiter:
    """A token bucket per client: ``rate`` submissions a second, bursts of ``burst``."""

    def __init__(self, rate: float, burst: int) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def check(self, client: Caller, now: float | None = None) -> None:
        """Refuse (TooManyRequests) a client without a whole submission left, spending
        nothing: what a request is charged before its body is read."""
        if self._rate <= 0:
            return
        now = time.monotonic() if now is None else now
        bucket = self._buckets.get(client.key)
        if bucket is None:
            return
        tokens = min(self._burst, bucket.tokens + (now - bucket.at) * self._rate)
        if tokens < 1:
            self._refuse(1, tokens)

    def take(self, client: Caller, now: float | None = None, count: int = 1) -> None:
        """Spend ``count`` submissions of the client's share (a batch of N images is N), or
        raise TooManyRequests and spend nothing."""
        if self._rate <= 0:
            return
        now = time.monotonic() if now is None else now
        bucket = self._buckets.pop(client.key, None) or _Bucket(self._burst, now)
        bucket.tokens = min(self._burst, bucket.tokens + (now - bucket.at) * self._rate)
        bucket.at = now
        self._buckets[client.key] = bucket  # most recently used last
        self._prune(now)
        if count > self._burst:
            # Never enough tokens, however long the client waits: say so rather than retry.
            raise TooManyRequests(
                f"{count} submissions at once is more than one client's burst of "
                f"{self._burst:g}; send fewer images per batch",
                retry_after=count / self._rate,
            )
        if bucket.tokens < count:
            self._refuse(count, bucket.tokens)
        bucket.tokens -= count

    def _refuse(self, count: int, tokens: float) -> NoReturn:
        wait = (count - tokens) / self._rate
        raise TooManyRequests(
            f"more than {self._rate:g} submissions a second (bursts of {self._burst:g}) "
            f"from one client; retry in {retry_after_header(wait)} s",
            retry_after=wait,
        )

    def _prune(self, now: float) -> None:
        while self._buckets:
            key, oldest = next(iter(self._buckets.items()))
            if now - oldest.at < _IDLE_SECONDS and len(self._buckets) <= _MAX_TRACKED:
                break
            del self._buckets[key]


class OpenWaits:
    """How many long-polls and event streams each client holds open, bounded; and how long
    one event stream may last."""

    def __init__(self, per_client: int, stream_seconds: float = _STREAM_SECONDS.default) -> None:
        self._limit = per_client
        self.stream_seconds = stream_seconds
        self._open: dict[str, int] = {}

    def count(self, client: Caller) -> int:
        return self._open.get(client.key, 0)

    @contextmanager
    def hold(self, client: Caller) -> Iterator[None]:
        held = self._open.get(client.key, 0)
        if held >= self._limit:
            raise TooManyRequests(
                f"this client already holds {held} open long-polls or event streams, the most "
                "one client may; close one or poll without ?wait",
                retry_after=1.0,
            )
        self._open[client.key] = held + 1
        try:
            yield
        finally:
            remaining = self._open[client.key] - 1
            if remaining:
                self._open[client.key] = remaining
            else:
                del self._open[client.key]
