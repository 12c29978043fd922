"""Each client's share of the fleet: how many of its jobs may be in flight at once.

A job is in flight from the moment this gateway publishes it until it is final (succeeded,
failed, cancelled) or gone.  The work queues are first in, first out, so what a client has in
flight is what everyone after it waits behind: the share bounds that, not a rate.

- A client alone (no other client submitted through this gateway in the last
  ``ACTIVE_SECONDS``, none has a job in flight) may have ``alone`` jobs in flight: a bulk job
  gets the whole fleet, and a fixed rate never holds it below what the replicas could do.
- With others, the fleet is divided: ``SHARE_PER_REPLICA`` job a replica online, shared
  equally among the clients submitting (at least one each).  A polite client's next job then
  waits behind a few of the others' jobs, not behind a flood.
- A client with nothing in flight may always send one request, whatever its size: a batch
  larger than its share goes through once its earlier jobs are done, so nobody is refused
  for ever.

Past its share a client gets 429 with ``Retry-After``.  The share is charged twice: before the
body is read (``check``: is there room for one more job?), so a client over it costs the gateway
nothing more, and once the request's images are known (``reserve``: room for all of them, or
none is accepted).  O(1) per submission and per job event.

Imports neither aiohttp nor aio_pika.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from gateway.clients import Caller, RateLimiter
from shared.errors import TooManyRequests
from shared.messages import JobEvent

# Jobs in flight per replica online, shared among the clients submitting.  A replica runs the
# jobs in hand a batch at a time, so with one a replica the clients' jobs run side by side
# rather than wait in the queue behind each other's.  Two a replica would keep every replica
# busy through the round trips, but measured (python -m bench --only shares, 2 replicas) a
# polite client beside a bulk one then waited 2.8-3.3 x its unloaded p50, against 1.6-1.7 x
# with one.
SHARE_PER_REPLICA: Final = 1
# How long after its last submission, or its last job ending, a client still counts as
# submitting: a client that waits for each result before sending the next job is between jobs
# for a round trip, which this covers on a slow network; and a bulk client has the whole fleet
# again this soon after the others stop.
ACTIVE_SECONDS: Final = 2.0
# 429 says to retry after this long: about when a job of the client's will have ended.
RETRY_SECONDS: Final = 1


@dataclass
class _Client:
    in_flight: int = 0
    # When it last submitted or had a job end (time.monotonic()).
    last_active: float = 0.0


class JobShares:
    """Jobs in flight per client, and the share each may have; a ``JobObserver`` of the store,
    which tells it when a job ends."""

    def __init__(
        self,
        alone: int,
        replicas_online: Callable[[], int],
        clock: Callable[[], float] | None = None,
    ) -> None:
        # 0: no limit at all.
        self._alone = alone
        self._replicas = replicas_online
        self._clock = clock or time.monotonic
        # Clients submitting now, least recently active first: the count is the divisor.
        self._clients: OrderedDict[str, _Client] = OrderedDict()
        # Job ID -> the client it counts against, while it is in flight.
        self._jobs: dict[str, str] = {}

    def in_flight(self, client: Caller) -> int:
        entry = self._clients.get(client.key)
        return entry.in_flight if entry else 0

    def share(self, client: Caller) -> int:
        """The most jobs ``client`` may have in flight now."""
        self._prune(self._clock())
        others = len(self._clients) - (client.key in self._clients)
        if others == 0:
            return self._alone
        divided = math.ceil(SHARE_PER_REPLICA * max(1, self._replicas()) / (others + 1))
        return max(1, min(self._alone, divided))

    def check(self, client: Caller, jobs: int = 1) -> None:
        """Room for ``jobs`` more of this client's jobs, or TooManyRequests (nothing taken)."""
        if self._alone <= 0:
            return
        share = self.share(client)
        held = self.in_flight(client)
        if held == 0 or held + jobs <= share:
            return
        alone = len(self._clients) <= 1
        whose = (
            "the most one client may have"
            if alone
            else f"its share while {len(self._clients)} clients are submitting"
        )
        asked = "" if jobs == 1 else f" and asks for {jobs} more"
        raise TooManyRequests(
            f"this client has {held} jobs queued or running on this gateway{asked}; {share} is "
            f"{whose}; retry in {RETRY_SECONDS} s, or once one of its jobs is final",
            retry_after=RETRY_SECONDS,
        )

    def reserve(self, client: Caller, jobs: int) -> Seats:
        """``jobs`` seats for the request's jobs, all or none (TooManyRequests), as a context
        manager: each published job takes one (``Seats.take``), and the seats not taken are
        given back on exit."""
        self.check(client, jobs)
        seats = Seats(self, client.key, jobs)
        self._add(client.key, jobs)
        return seats

    def job_changed(self, previous: JobEvent | None, current: JobEvent) -> None:
        if current.status.is_final:
            self._end(current.job_id)

    def job_removed(self, job_id: str) -> None:
        self._end(job_id)

    def _seat(self, key: str, job_id: str) -> None:
        self._jobs[job_id] = key

    def _end(self, job_id: str) -> None:
        key = self._jobs.pop(job_id, None)
        if key is not None:
            self._add(key, -1)

    def _add(self, key: str, jobs: int) -> None:
        entry = self._clients.pop(key, None) or _Client()
        entry.in_flight += jobs
        entry.last_active = self._clock()
        self._clients[key] = entry  # most recently active last

    def _prune(self, now: float) -> None:
        while self._clients:
            key, oldest = next(iter(self._clients.items()))
            if now - oldest.last_active < ACTIVE_SECONDS:
                return
            del self._clients[key]
            if oldest.in_flight > 0:
                # Still has jobs in flight: still submitting, as far as the others go.
                oldest.last_active = now
                self._clients[key] = oldest


class Seats:
    """Seats held for one request's jobs (``JobShares.reserve``), until the ``with`` block
    that holds them ends."""

    def __init__(self, shares: JobShares, key: str, count: int) -> None:
        self._shares = shares
        self._key = key
        self.left = count

    # A class rather than a generator context manager: one of these is made per submission.
    def __enter__(self) -> Seats:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._shares._add(self._key, -self.left)
        self.left = 0

    def take(self, job_id: str) -> None:
        """The job ``job_id`` is being published: it holds a seat until it is final.  Called
        before it is published, since a fast replica's result can arrive before the confirm."""
        if self.left <= 0:
            raise RuntimeError("more jobs than seats reserved")
        self.left -= 1
        self._shares._seat(self._key, job_id)


class ClientShares:
    """Everything one client's submissions are charged against: its jobs in flight and, when
    IMGQ_CLIENT_RATE is set, a rate."""

    def __init__(self, jobs: JobShares, rate: RateLimiter | None = None) -> None:
        self.jobs = jobs
        self._rate = rate if rate is not None else RateLimiter(0, 1)

    def check(self, client: Caller) -> None:
        """Before the body is read: a client with no room for one more job is refused at once."""
        self.jobs.check(client)
        self._rate.check(client)

    def reserve(self, client: Caller, jobs: int) -> Seats:
        """Once the request's images are known: all its jobs fit, or none is accepted (429).
        A context manager, as ``JobShares.reserve``."""
        self.jobs.check(client, jobs)
        self._rate.take(client, count=jobs)
        return self.jobs.reserve(client, jobs)
