"""The service's verbs: accept jobs, cancel one, forget one.  The HTTP views only translate;
reading a request into submissions is ``gateway/intake.py``.

Imports neither aiohttp nor aio_pika: the broker is reached through the small ``Publisher``
protocol and results through the ``JobStore``, so each rule here (idempotency, result reuse,
what may be cancelled) is stated once, whatever protocol the request came in by.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from gateway.batch_store import created_at
from gateway.metrics import GatewayMetrics
from gateway.shares import Seats
from gateway.store import JobStore
from shared import tracing
from shared.errors import CallbackRefused, IdempotencyKeyReused, JobConflict, NotReady
from shared.logs import job_fields
from shared.messages import (
    BatchRecord,
    BatchRef,
    ClassifyRequest,
    JobEvent,
    JobFailure,
    new_job_id,
)
from shared.states import JobStatus

log = logging.getLogger(__name__)


class Publisher(Protocol):
    """What accepting and cancelling need of the broker (``gateway.broker.GatewayBroker``)."""

    @property
    def ready(self) -> bool: ...

    @property
    def user(self) -> str | None:
        """The broker user requests go out as: a job's events name it (``requested_by``)."""

    async def submit(self, request: ClassifyRequest, queued: JobEvent, content_type: str) -> None:
        """Return once the broker has confirmed the job; raise ``ImgqError`` if it did not."""

    async def publish_event(self, event: JobEvent) -> None: ...

    async def publish_forgotten(self, job_id: str) -> None: ...

    async def publish_batch(self, record: BatchRecord) -> None: ...


@dataclass(frozen=True, slots=True)
class Submission:
    """A checked request for a classification: a model on offer and image bytes."""

    model: str
    image_name: str
    image: bytes
    content_type: str
    # Known for gallery images, which are hashed once at start-up; else hashed on accept.
    image_sha256: str = ""
    idempotency_key: str | None = None
    # False when the client asked for a fresh run (Cache-Control: no-cache).
    reuse: bool = True
    # The batch it is part of (POST /batches), carried by the job's request and events.
    batch: BatchRef | None = None
    # Where to POST the job (or its batch) once final: checked (gateway/callbacks.py).
    callback: str | None = None


@dataclass(frozen=True, slots=True)
class Accepted:
    job: JobEvent
    # An earlier job submitted with the same idempotency key, returned again.
    replayed: bool = False
    # Queued just now by this gateway: its queue position is cheap to give (the newest).
    newest: bool = False


class Jobs:
    def __init__(self, store: JobStore, broker: Publisher, metrics: GatewayMetrics) -> None:
        self._store = store
        self._broker = broker
        self._metrics = metrics

    async def accept_all(
        self,
        submissions: Sequence[Submission],
        owner: str | None,
        seats: Seats | None = None,
    ) -> list[Accepted]:
        """Accept each submission in turn (a single job is a batch of one).  Each job this
        gateway publishes takes one of ``seats`` (the client's share, ``gateway/shares.py``)
        until it is final.  If one cannot be published, the ones before it that are still
        queued are cancelled again, so a refused request leaves no jobs running."""
        self._check_batch_callback(submissions, owner)
        accepted: list[Accepted] = []
        try:
            for submission in submissions:
                accepted.append(await self._accept(submission, owner, seats))
            record = _batch_record(submissions, accepted, owner)
            if record is not None:
                await self._broker.publish_batch(record)
        except Exception:
            for earlier in accepted:
                with contextlib.suppress(Exception):
                    if earlier.newest:
                        await self.cancel_or_forget(earlier.job.job_id, owner)
            raise
        return accepted

    def _check_batch_callback(self, submissions: Sequence[Submission], owner: str | None) -> None:
        """A batch's callback travels in the jobs the batch creates and is sent once they are
        all final.  A job that an Idempotency-Key replays is the earlier request's, callback and
        all, and says nothing of this batch: so a batch with a callback is either all new jobs
        or all replayed ones (a retry: the earlier request's callback is the one sent)."""
        if not submissions or submissions[0].batch is None or submissions[0].callback is None:
            return
        replayed = [
            (index, submission.idempotency_key)
            for index, submission in enumerate(submissions)
            if submission.idempotency_key is not None
            and self._store.by_idempotency_key(submission.idempotency_key, owner) is not None
        ]
        if replayed and len(replayed) < len(submissions):
            index, key = replayed[0]
            raise CallbackRefused(
                f"images[{index}] is a job of an earlier request (Idempotency-Key {key!r}), and "
                "a batch's callback travels with the jobs the batch creates: send the earlier "
                "batch again as it was, or this one with a new Idempotency-Key"
            )

    async def _accept(
        self, submission: Submission, owner: str | None, seats: Seats | None
    ) -> Accepted:
        if not self._broker.ready:
            raise NotReady("the gateway is still connecting to the broker; try again shortly")
        request = ClassifyRequest(
            job_id=new_job_id(),
            model=submission.model,
            image_name=submission.image_name,
            image=submission.image,
            batch=submission.batch,
            # In whole microseconds, as the request's header carries it (shared/wire.py): every
            # event of the job, the replica's included, then says the same time, and so does
            # every gateway's answer for it and for its batch.
            queued_at=round(time.time() * 1_000_000) / 1_000_000,
            idempotency_key=submission.idempotency_key,
            image_sha256=submission.image_sha256,
            owner=owner,
            requested_by=self._broker.user,
            callback=submission.callback,
        )
        key = submission.idempotency_key
        if key is not None:
            earlier = self._store.by_idempotency_key(key, owner)
            if earlier is not None:
                if (earlier.model, earlier.image_sha256) != (request.model, request.image_sha256):
                    raise IdempotencyKeyReused(
                        f"Idempotency-Key {key!r} was first used for another model or image"
                    )
                return Accepted(earlier, replayed=True)

        queued = JobEvent.for_request(request, JobStatus.QUEUED)
        if submission.reuse:
            earlier = self._store.reusable_result(request.model, request.image_sha256, owner)
            if earlier is not None:
                if (
                    earlier.reused_from is not None
                    and key is None
                    and earlier.image == request.image_name
                    and request.batch is None
                    and request.callback is None
                ):
                    # Already a reuse of this client's: answer with it again rather than log
                    # one more job, so resubmitting an image in a loop costs no log or store.
                    # Not for a batch's image: a job of its own names the batch in its events;
                    # nor with a callback: a job of its own is what calls it back.
                    return Accepted(earlier)
                return await self._reuse(queued, earlier)

        # Recorded before publishing: a fast replica's events can beat the confirm back to us.
        self._metrics.accepted(request.job_id)
        if seats is not None:
            seats.take(request.job_id)
        self._store.apply(queued)
        try:
            with tracing.publishing(request):
                await self._broker.submit(request, queued, submission.content_type)
        except Exception:
            self._store.discard(request.job_id)
            raise
        log.info("job %s queued", request.job_id, extra=job_fields(request.job_id, request.model))
        # The answer describes the job as accepted, even if a replica has already started it.
        return Accepted(queued, newest=True)

    async def _reuse(self, queued: JobEvent, earlier: JobEvent) -> Accepted:
        """Same model, same bytes: the answer is already known.  The new job is logged like
        any other, so every gateway (and a retry with the same key) sees it."""
        reused = queued.advance(
            JobStatus.SUCCEEDED,
            started_at=queued.queued_at,
            finished_at=queued.queued_at,
            replica=earlier.replica,
            result=earlier.result,
            reused_from=earlier.job_id,
            model_version=earlier.model_version,
        )
        await self._broker.publish_event(reused)
        self._metrics.accepted(reused.job_id)
        self._metrics.result_reuse.inc()
        self._store.apply(reused)
        log.info(
            "job %s answered with the result of job %s",
            reused.job_id,
            earlier.job_id,
            extra=job_fields(reused.job_id, reused.model),
        )
        return Accepted(reused)

    async def cancel_or_forget(self, job_id: str, owner: str | None = None) -> JobEvent | None:
        """Cancel a queued job (returned, now cancelled); forget a finished one (None).

        A started job cannot be stopped: replicas do not interrupt a forward pass.  Only the
        client that submitted a job may do either (another token's job is not found).
        """
        job = self._store.get(job_id, owner)
        if job.status is JobStatus.QUEUED:
            cancelled = job.advance(
                JobStatus.CANCELLED,
                finished_at=time.time(),
                error=JobFailure("cancelled", "cancelled by the client before a replica took it"),
            )
            await self._broker.publish_event(cancelled)
            self._store.apply(cancelled)
            log.info("job %s cancelled", job_id, extra=job_fields(job_id, job.model))
            return self._store.get(job_id, owner)
        if job.status is JobStatus.STARTED:
            raise JobConflict("the job has already started on a replica and cannot be cancelled")
        await self._broker.publish_forgotten(job_id)
        self._store.forget(job_id)
        return None


def _batch_record(
    submissions: Sequence[Submission], accepted: Sequence[Accepted], owner: str | None
) -> BatchRecord | None:
    """The record of a batch whose jobs' own events do not all name it, or None.

    A member whose idempotency key was replayed is an earlier job, whose events name the batch
    it was first submitted in (or none): another gateway could not find it under this batch,
    so the batch goes in the log as a list of its members.  A batch of new jobs needs none.
    """
    refs = [submission.batch for submission in submissions]
    if not refs or refs[0] is None:
        return None
    if all(item.job.batch == ref for item, ref in zip(accepted, refs, strict=True)):
        return None
    return BatchRecord(
        batch_id=refs[0].batch_id,
        model=submissions[0].model,
        job_ids=tuple(item.job.job_id for item in accepted),
        owner=owner,
        created_at=created_at(item.job for item in accepted),
    )
