"""Request bodies in memory, bounded: per client, for the whole gateway, and in time.

A submission's body stays in memory until its jobs are published (an upload travels inside
its job's message), so every byte read is held against two budgets: the client's own
(``IMGQ_CLIENT_BODY_BYTES``: past it, 429) and the gateway's (``IMGQ_BODY_BYTES``: past it,
503).  A body that declares its length holds all of it before a byte is read, so it is refused
at once; a chunked one holds what has arrived, chunk by chunk.  What a request holds is given
back when it is answered.  ``IMGQ_BODY_TIMEOUT`` bounds how long a body may take to arrive, so
a client that sends slowly, or stops, cannot hold its share for ever.

Imports neither aiohttp nor aio_pika.
"""

from __future__ import annotations

from gateway.clients import Caller
from shared.errors import TooManyRequests, UploadsBusy, retry_after_header

# 429 says to retry after this long: about when one of the client's requests is answered.
RETRY_SECONDS = 1


class BodyBytes:
    """Body bytes held now, per client and in all, against ``per_client`` and ``total``."""

    def __init__(self, per_client: int, total: int) -> None:
        self.per_client = per_client
        self.total = total
        self.held = 0
        self._by_client: dict[str, int] = {}

    def of(self, client: Caller) -> int:
        return self._by_client.get(client.key, 0)

    def lease(self, client: Caller) -> Lease:
        """What one request holds, as a context manager: all of it is given back on exit."""
        return Lease(self, client.key)

    def _hold(self, key: str, more: int) -> None:
        mine = self._by_client.get(key, 0)
        if mine + more > self.per_client:
            raise TooManyRequests(
                f"this client already has {mine:,} bytes of request bodies on this gateway and "
                f"this one needs {more:,} more; one client may have {self.per_client:,} at once. "
                f"Retry in {retry_after_header(RETRY_SECONDS)} s, or once one of its requests "
                "is answered",
                retry_after=RETRY_SECONDS,
            )
        if self.held + more > self.total:
            raise UploadsBusy(
                f"the gateway holds {self.held:,} bytes of request bodies, as many as it takes "
                "at once; retry shortly"
            )
        self._by_client[key] = mine + more
        self.held += more

    def _give_back(self, key: str, size: int) -> None:
        if size == 0:
            return
        self.held -= size
        left = self._by_client[key] - size
        if left:
            self._by_client[key] = left
        else:
            del self._by_client[key]


class Lease:
    """The body bytes one request holds (``BodyBytes.lease``)."""

    def __init__(self, budget: BodyBytes, key: str) -> None:
        self._budget = budget
        self._key = key
        self.size = 0

    # A class rather than a generator context manager: one of these is made per submission.
    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._budget._give_back(self._key, self.size)
        self.size = 0

    def cover(self, size: int) -> None:
        """Hold at least ``size`` bytes in all for this body: TooManyRequests past the
        client's budget, UploadsBusy past the gateway's; nothing more is held then."""
        if size > self.size:
            self._budget._hold(self._key, size - self.size)
            self.size = size
