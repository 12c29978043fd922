"""Batches: many jobs accepted by one request.

A batch is only a list of job IDs with an owner; the jobs themselves live in the ``JobStore``
like any other (and are in the shared event log, so every gateway knows them by ID).  The
gateway that accepted a batch keeps its record; every job also carries its place in the batch
(``BatchRef``, in its request and events), so behind a load balancer another gateway answers
``GET /batches/{id}`` from the jobs it has read in the log.  A member that is an earlier job
(its idempotency key replayed) names the batch it was first submitted in, so for a batch with
such members the accepting gateway also logs the batch's record (``BatchRecord``), which every
gateway keeps here like its own.  Records are bounded: the oldest
batch goes first beyond ``MAX_BATCHES``, and a batch whose jobs are all gone (expired,
deleted, evicted) is dropped when it is next looked at or pushed out.

Imports neither aiohttp nor aio_pika.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Protocol

from gateway.limits import MIB
from shared.errors import BatchNotFound, JobGone, JobNotFound
from shared.messages import MAX_BATCH_JOBS, BatchRecord, JobEvent
from shared.settings import GATEWAY, Environ, env_int, variable

# A batch holds at least one job and IMGQ_MAX_JOBS bounds the jobs; this bounds the records
# themselves (a few hundred bytes each) even when their jobs are long gone.
MAX_BATCHES: Final = 10_000
# The most IMGQ_BATCH_MAX_IMAGES may say: a batch's jobs are keyed '<key>#<index>', and the
# index must fit beside the key in an Idempotency-Key's 255 characters.  Batch records in the
# event log are read with the same bound.
MAX_BATCH_IMAGES: Final = MAX_BATCH_JOBS

_MAX_IMAGES = variable(
    "IMGQ_BATCH_MAX_IMAGES",
    64,
    GATEWAY,
    "most images in one `POST /batches` (more: `413`)",
)
_MAX_BYTES = variable(
    "IMGQ_BATCH_MAX_BYTES",
    64 * MIB,
    GATEWAY,
    "most bytes in one `POST /batches` body, all uploads together (more: `413`)",
)


@dataclass(frozen=True, slots=True)
class BatchLimits:
    # 64: the closing note's "50 uploads through one request" with room to spare, while one
    # request still checks its images in a few seconds at most.
    max_images: int = _MAX_IMAGES.default
    # The whole body is held in memory until every image is checked (all or nothing), so it is
    # bounded: 64 MiB is 50 phone photos of about 1.3 MB, or 6 of the largest single uploads.
    max_bytes: int = _MAX_BYTES.default

    @classmethod
    def from_env(cls, env: Environ) -> BatchLimits:
        return cls(
            max_images=env_int(
                env, _MAX_IMAGES.name, _MAX_IMAGES.default, minimum=1, maximum=MAX_BATCH_IMAGES
            ),
            max_bytes=env_int(env, _MAX_BYTES.name, _MAX_BYTES.default, minimum=1024),
        )


@dataclass(frozen=True, slots=True)
class Batch:
    batch_id: str
    model: str
    job_ids: tuple[str, ...]
    owner: str | None
    created_at: float
    # How many jobs the batch has: more than job_ids while another gateway's batch is still
    # being read from the event log.
    size: int = 0

    @property
    def complete(self) -> bool:
        return len(self.job_ids) >= self.size


class JobLookup(Protocol):
    """What a batch needs of the ``JobStore``: a job by ID, or JobGone / JobNotFound."""

    def get(self, job_id: str, owner: str | None = None) -> JobEvent: ...

    def batch_members(self, batch_id: str) -> list[JobEvent]: ...


def created_at(jobs: Iterable[JobEvent]) -> float:
    """When a batch was created, as every gateway can tell from its jobs: the earliest time
    one of them was queued."""
    return min((job.queued_at for job in jobs if job.queued_at is not None), default=time.time())


def new_batch_id() -> str:
    # Unguessable, like job IDs: on an open gateway the ID is what keeps a batch to its client.
    return secrets.token_hex(16)


def is_batch_id(value: str) -> bool:
    return len(value) == 32 and all(c in "0123456789abcdef" for c in value)


class Batches:
    def __init__(self, jobs: JobLookup, max_batches: int = MAX_BATCHES) -> None:
        self._jobs = jobs
        self._max = max_batches
        self._batches: OrderedDict[str, Batch] = OrderedDict()

    def __len__(self) -> int:
        return len(self._batches)

    def add(
        self,
        model: str,
        job_ids: tuple[str, ...],
        owner: str | None,
        batch_id: str | None = None,
        created_at: float | None = None,
    ) -> Batch:
        """A batch this gateway accepted; ``created_at`` as ``created_at()`` says, so that every
        gateway gives the batch the same time."""
        created = time.time() if created_at is None else created_at
        batch = Batch(batch_id or new_batch_id(), model, job_ids, owner, created, len(job_ids))
        self._keep(batch)
        return batch

    def record(self, record: BatchRecord) -> None:
        """A batch's record from the event log (any gateway's), for a batch whose members'
        own events do not all name it (an idempotency key replayed an earlier job)."""
        self._keep(
            Batch(
                record.batch_id,
                record.model,
                record.job_ids,
                record.owner,
                record.created_at,
                len(record.job_ids),
            )
        )

    def _keep(self, batch: Batch) -> None:
        self._batches[batch.batch_id] = batch
        while len(self._batches) > self._max:
            self._batches.popitem(last=False)
        self._drop_oldest_if_gone()

    def get(self, batch_id: str, owner: str | None = None) -> Batch:
        """The batch, as ``owner`` may see it: another token's batch is "not found" (404),
        exactly as an unknown ID, as for jobs."""
        batch = self._batches.get(batch_id) or self._from_log(batch_id)
        if batch is None or (owner is not None and batch.owner not in (None, owner)):
            raise BatchNotFound(batch_id)
        if self._all_gone(batch):
            self._batches.pop(batch_id, None)
            raise BatchNotFound(batch_id)
        return batch

    def _from_log(self, batch_id: str) -> Batch | None:
        """Another gateway's batch, as its jobs' events describe it (each carries its place in
        the batch).  Not kept: the jobs are, and this is rebuilt from them on each request."""
        members = self._jobs.batch_members(batch_id)
        if not members:
            return None
        first = members[0]
        assert first.batch is not None
        return Batch(
            batch_id,
            first.model,
            tuple(job.job_id for job in members),
            first.owner,
            created_at(members),
            first.batch.size,
        )

    def _drop_oldest_if_gone(self) -> None:
        # Amortised: one look at the oldest record per batch added keeps the gone ones from
        # piling up without walking them all.
        if self._batches:
            oldest = next(iter(self._batches.values()))
            if self._all_gone(oldest):
                del self._batches[oldest.batch_id]

    def _all_gone(self, batch: Batch) -> bool:
        for job_id in batch.job_ids:
            try:
                self._jobs.get(job_id)
            except (JobGone, JobNotFound):
                continue
            return False
        return True
