"""What a callback says: the job (or batch) as ``GET`` answers for it once final, its event
type and its delivery ID.

A job's callback (``POST /classifications`` with a ``callback_url``) is sent when the job is
final, with ``{"id", "type": "job.<status>", "job": <GET /classifications/{id}>}``.  A batch's
(``POST /batches`` with one) is sent once, when every job of the batch is final, with
``{"id", "type": "batch.done", "batch": <GET /batches/{id}>}``, and no callback per job.

The delivery ID is derived from what is delivered (the job's or the batch's ID), so every
attempt, on any gateway, after any restart, carries the same one, and a job's final event
read twice (a replica that died after publishing its result) gives the receiver a repeat it
recognises.

Imports neither aiohttp nor aio_pika.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Final, Protocol

import orjson

from gateway.answers import batch_body, job_answer
from gateway.batch_store import Batch
from shared.errors import BatchNotFound, JobGone, JobNotFound
from shared.messages import JobEvent, WebhookDelivery

# Names delivery IDs (uuid5): fixed, so that every gateway derives the same ID.
_DELIVERIES: Final = uuid.UUID("0d5c3a53-8a4e-4e8f-9a77-6f1d2f0b9c41")
BATCH_DONE: Final = "batch.done"


def delivery_id(kind: str, subject: str) -> str:
    """The ID of the callback for job (``kind`` "job") or batch ("batch") ``subject``."""
    return uuid.uuid5(_DELIVERIES, f"{kind}/{subject}").hex


class JobLookup(Protocol):
    """What a batch's callback reads of the gateway's jobs (the store)."""

    def get(self, job_id: str, owner: str | None = None) -> JobEvent: ...


class BatchLookup(Protocol):
    def get(self, batch_id: str, owner: str | None = None) -> Batch: ...


def for_job(event: JobEvent, now: float | None = None) -> WebhookDelivery:
    """The callback of a job (not of a batch) that ``event`` made final."""
    assert event.callback is not None
    assert event.status.is_final
    kind = f"job.{event.status.value}"
    ident = delivery_id("job", event.job_id)
    # GET /classifications/{id}'s answer for a final job: no queue position.
    body = {"id": ident, "type": kind, "job": job_answer(event, None)}
    return _delivery(event, ident, kind, body, None, now)


def for_batch(
    event: JobEvent, batches: BatchLookup, jobs: JobLookup, now: float | None = None
) -> WebhookDelivery | None:
    """The callback of ``event``'s batch, which ``event`` completed (``gateway/batch_ends.py``);
    None when the batch is gone (its jobs expired or deleted meanwhile)."""
    assert event.callback is not None
    assert event.batch is not None
    try:
        batch = batches.get(event.batch.batch_id)
    except BatchNotFound:
        return None
    members: list[JobEvent | None] = []
    for job_id in batch.job_ids:
        try:
            members.append(jobs.get(job_id))
        except (JobGone, JobNotFound):
            members.append(None)
    ident = delivery_id("batch", batch.batch_id)
    view = batch_body(batch, members, [None] * len(members))
    body = {"id": ident, "type": BATCH_DONE, "batch": view}
    return _delivery(event, ident, BATCH_DONE, body, batch.batch_id, now)


def _delivery(
    event: JobEvent,
    ident: str,
    kind: str,
    body: Mapping[str, object],
    batch_id: str | None,
    now: float | None,
) -> WebhookDelivery:
    assert event.callback is not None
    return WebhookDelivery(
        delivery_id=ident,
        url=event.callback,
        event=kind,
        body=orjson.dumps(body),
        owner=event.owner,
        job_id=event.job_id,
        model=event.model,
        batch_id=batch_id,
        attempt=1,
        first_attempt_at=time.time() if now is None else now,
    )
