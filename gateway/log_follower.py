"""The event log, applied: each entry of ``imgq.events.log`` into the job store and batches.

The transport (``gateway/broker.py``, with ``gateway/log_consumer.py``: bare deliveries, acks in
bulk) consumes the stream and hands every message to ``LogFollower.take``; nothing here knows of
connections or channels.  A message holds one entry, or a batch of job events (replicas send a
batch's results and the next batch's "started" together, gateways their "queued" events),
each applied in turn.  The follower:

- knows a replay has caught up when it reads back the marker its session appended
  (``begin``), which is what readiness waits for;
- keeps the offset of the last entry it read, so the next session resumes right after it;
- skips an entry that cannot be read, or whose sender may not send it (``gateway/senders.py``);
- notes where each batch job first became final (``gateway/batch_ends.py``), the order in
  which every gateway sees a batch complete;
- believes a job's owner, batch, idempotency key and callback only from a gateway's request,
  and lets no event of another producer's request touch a job a gateway accepted
  (``_admitted``);
- never stops on an entry: whatever goes wrong with one is logged with the reason, and the
  next is taken (the consumer acks past it like any other).

Imports neither aiohttp nor aio_pika: tests drive it with fake messages (``tests/fake_log.py``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Protocol

from gateway.batch_ends import BatchEnds
from gateway.senders import Senders
from gateway.store import JobStore
from shared import tracing, wire
from shared.errors import MessageError
from shared.logs import job_fields
from shared.messages import BatchRecord, JobEvent, JobForgotten
from shared.topology import (
    BATCH_ROUTING_KEY,
    FORGOTTEN_ROUTING_KEY,
    job_routing_key,
    marker_routing_key,
)

log = logging.getLogger(__name__)


class BatchRecords(Protocol):
    """Where batch records from the log go (``gateway.batch_store.Batches``)."""

    def record(self, record: BatchRecord) -> None: ...


class LogFollower:
    def __init__(self, store: JobStore, batches: BatchRecords, senders: Senders) -> None:
        self._store = store
        self._batches = batches
        self._senders = senders
        # The broker users whose requests are a gateway's, for this session.
        self._requesters: frozenset[str] = frozenset()
        self._marker: str | None = None
        self._caught_up = False
        self._replayed = False
        # The offset of the last entry read: the next session starts right after it.
        self.offset: int | None = None
        # Where each batch job's first final event is in the log (gateway/webhooks.py).
        self.batch_ends = BatchEnds()
        self.replay_seconds: float | None = None
        self._started = time.monotonic()

    # -- sessions ------------------------------------------------------------------------

    def begin(self, marker: str, user: str) -> int | str:
        """A new session, connected as broker user ``user``, that will append ``marker``:
        returns where to read the log from (its start, or after the last entry read)."""
        self._marker = marker
        self._caught_up = False
        self._requesters = self._senders.requesters(user)
        return "first" if self.offset is None else self.offset + 1

    def log_replaced(self) -> None:
        """The log was deleted: one declared in its place numbers its entries from 0 again."""
        self.offset = None

    @property
    def caught_up(self) -> bool:
        """This session has read its own marker: everything logged before it is applied."""
        return self._caught_up

    @property
    def replayed(self) -> bool:
        """Some session has caught up: the store holds every result in the retention window."""
        return self._replayed

    # -- entries -------------------------------------------------------------------------

    def take(self, delivery: wire.LogDelivery) -> None:
        """Read one message of the log and apply what it holds, or say in the log why not.
        Never raises: an entry that cannot be read or applied is skipped, with its reason."""
        offset = delivery.offset
        if offset is not None and (self.offset is None or offset > self.offset):
            self.offset = offset
        try:
            read = wire.parse_log_entries(delivery)
        except MessageError as exc:
            log.warning("ignoring malformed event %s: %s", delivery.routing_key, exc)
            return
        except Exception as exc:  # anything at all: this entry is skipped, the log goes on
            log.exception(
                "event log entry %s at offset %s skipped: %r", delivery.routing_key, offset, exc
            )
            return
        for why in read.skipped:
            log.warning("ignoring malformed event in %s: %s", delivery.routing_key, why)
        for entry, trace in read.entries:
            try:
                self._apply(entry, trace, delivery.user_id, offset)
            except Exception as exc:  # this entry is skipped, the next is taken
                log.exception(
                    "event log entry %s at offset %s skipped: %r", delivery.routing_key, offset, exc
                )

    def _apply(
        self,
        entry: wire.LogEntry,
        trace: Mapping[str, str],
        sender: str | None,
        offset: int | None,
    ) -> None:
        """One entry of a message at ``offset`` (the entries of one message share it)."""
        refusal = self._senders.refuses(entry, sender)
        if refusal is not None:
            log.warning("ignoring event %s: %s", _kind(entry), refusal)
        elif isinstance(entry, JobEvent):
            event = self._admitted(entry)
            if event is not None:
                if event.batch is not None and event.status.is_final and offset is not None:
                    self.batch_ends.record(event.batch, event.job_id, offset)
                with tracing.applying(event, trace, live=self._replayed):
                    self._store.apply(event)
        elif isinstance(entry, wire.Marker):
            self._marker_read(entry.value)
        elif isinstance(entry, JobForgotten):
            self._store.forget(entry.job_id)
        else:
            self._batches.record(entry)

    def _admitted(self, event: JobEvent) -> JobEvent | None:
        """The event as far as it can be believed (see gateway/senders.py), or None.

        A gateway's request: as it is.  Any other producer's request: its owner, batch,
        idempotency key and callback are that producer's say-so, so they are dropped (the store
        keeps what a gateway's events said of the job); and when it names a job a gateway's
        request made, it is a producer reusing a known job ID, so none of it applies.  An event
        written before events named their request's sender (an older replica) cannot be told
        apart: it loses those fields but still moves its job on.
        """
        if event.requested_by in self._requesters:
            return event
        if event.requested_by is not None:
            current = self._store.peek(event.job_id)
            if current is not None and current.requested_by in self._requesters:
                log.warning(
                    "ignoring %s event of job %s: its request came from %r, not a gateway, "
                    "and a gateway's request has that job ID",
                    event.status,
                    event.job_id,
                    event.requested_by,
                    extra=job_fields(event.job_id, event.model),
                )
                return None
        if (
            event.owner is None
            and event.batch is None
            and event.idempotency_key is None
            and event.callback is None
        ):
            return event
        return replace(event, owner=None, batch=None, idempotency_key=None, callback=None)

    def _marker_read(self, value: str) -> None:
        if value != self._marker or self._caught_up:
            return  # another gateway's marker, or an older session's
        self._caught_up = True
        if not self._replayed:
            self._replayed = True
            self.replay_seconds = time.monotonic() - self._started
            log.info("event log replayed: %d jobs in %.2f s", len(self._store), self.replay_seconds)


def _kind(entry: wire.LogEntry) -> str:
    """What the entry is, as the routing key of a message of its own would say."""
    if isinstance(entry, JobEvent):
        return job_routing_key(entry.status.value)
    if isinstance(entry, JobForgotten):
        return FORGOTTEN_ROUTING_KEY
    if isinstance(entry, BatchRecord):
        return BATCH_ROUTING_KEY
    return marker_routing_key(entry.value)
