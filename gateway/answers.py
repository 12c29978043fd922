"""What the HTTP API says about a job and a batch: the API's own view of them.

A ``JobEvent`` is what travels on the broker (``shared/messages.py``), with fields only the
gateways use (the owner, the batch, the idempotency key, the image's digest, who published the
request); the API shows a job as ``job_answer`` builds it, as ``openapi.json``'s ``Job`` says.
A change to the event or to the answer is then a change to that one alone.
"""

from __future__ import annotations

from typing import Any

from gateway.batch_store import Batch
from gateway.store import JobStore
from shared.messages import JobEvent
from shared.states import JobStatus


def job_answer(job: JobEvent, position: int | None) -> dict[str, Any]:
    """The API's ``Job``; ``position`` counts only while the job is queued."""
    return {
        "job_id": job.job_id,
        "status": job.status.value,
        "model": job.model,
        "model_version": job.model_version,
        "image": job.image,
        "result": None if job.result is None else [label.to_dict() for label in job.result],
        "error": None if job.error is None else job.error.to_dict(),
        "queued_at": job.queued_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "replica": job.replica,
        "position": position if job.status is JobStatus.QUEUED else None,
        "reused_from": job.reused_from,
    }


def job_body(store: JobStore, job: JobEvent, *, newest: bool = False) -> dict[str, Any]:
    """The job as the API answers for it, with its place in its model's queue."""
    if job.status is not JobStatus.QUEUED:
        return job_answer(job, None)
    if newest:
        return job_answer(job, store.position_if_newest(job.job_id))
    return job_answer(job, store.position(job.job_id))


def batch_body(
    batch: Batch, jobs: list[JobEvent | None], positions: list[int | None]
) -> dict[str, Any]:
    """The batch: its jobs in the order of the images (those gone are listed by ID in
    ``gone``), how many are in each status, and whether all are final."""
    records = []
    gone = []
    counts = {status.value: 0 for status in JobStatus}
    for job_id, job, position in zip(batch.job_ids, jobs, positions, strict=True):
        if job is None:
            gone.append(job_id)
            continue
        counts[job.status.value] += 1
        records.append(job_answer(job, position))
    return {
        "batch_id": batch.batch_id,
        "model": batch.model,
        "created_at": batch.created_at,
        # A batch read from the log before all its jobs' events arrived is not done yet.
        "done": batch.complete and all(job is None or job.status.is_final for job in jobs),
        "counts": counts,
        "jobs": records,
        "gone": gone,
    }
