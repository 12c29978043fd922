"""Job states and the order they move in."""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    QUEUED = "queued"
    STARTED = "started"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    # Withdrawn by the client while still queued; no replica spends time on it.
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in _FINAL

    def may_become(self, other: JobStatus) -> bool:
        """Events can arrive twice or late (redelivery, reconnects): a job only moves forward."""
        return _RANK[other] > _RANK[self]


_FINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})
_RANK = {
    JobStatus.QUEUED: 0,
    JobStatus.STARTED: 1,
    JobStatus.SUCCEEDED: 2,
    JobStatus.FAILED: 2,
    JobStatus.CANCELLED: 2,
}
