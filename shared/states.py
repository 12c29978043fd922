"""Job states and the order they move in."""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    QUEUED = "queued"
    STARTED = "started"
    SUCCEEDED = "succeeded"
    FAILED = "failed"

    @property
    def is_final(self) -> bool:
        return self in _FINAL

    def may_become(self, other: JobStatus) -> bool:
        """Events can arrive twice or late (redelivery, reconnects): a job only moves forward."""
        return _RANK[other] > _RANK[self]


_FINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED})
_RANK = {
    JobStatus.QUEUED: 0,
    JobStatus.STARTED: 1,
    JobStatus.SUCCEEDED: 2,
    JobStatus.FAILED: 2,
}
