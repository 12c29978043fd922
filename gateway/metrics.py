"""The gateway's Prometheus metrics (served at GET /metrics).

Job counts and latencies cover the jobs *this* gateway accepted, not every job it reads
from the shared event log: each job is counted by exactly one gateway, so summing a metric
over all gateways gives the fleet's figure, and a restarted gateway does not count its
replay again.  Dead letters are counted by whichever gateway consumed the notice (the
notices queue has competing consumers), which keeps the same property.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Final

from shared.messages import JobEvent
from shared.metrics import LATENCY_BUCKETS, Registry

# Jobs accepted here and not yet final.  Bounded: a job whose final event never comes (its
# log entries expired) must not pin memory forever.
_MAX_TRACKED: Final = 100_000


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = Registry()
        self.jobs = self.registry.counter(
            "imgq_jobs_total",
            "Jobs accepted by this gateway that reached a final state, by model and status.",
            ("model", "status"),
        )
        self.queue_wait = self.registry.histogram(
            "imgq_queue_wait_seconds",
            "Seconds from acceptance to a replica starting the job (reused results excluded).",
            LATENCY_BUCKETS,
        )
        self.end_to_end = self.registry.histogram(
            "imgq_end_to_end_seconds",
            "Seconds from acceptance to the final state (reused results excluded).",
            LATENCY_BUCKETS,
        )
        self.long_polls = self.registry.gauge(
            "imgq_long_polls_waiting",
            "Requests (long-polls and event streams) waiting for a job to change.",
        )
        self.result_reuse = self.registry.counter(
            "imgq_result_reuse_total",
            "Jobs answered at once with the result of an earlier job on identical input.",
        )
        self.dead_lettered = self.registry.counter(
            "imgq_dead_lettered_total",
            "Dead-lettered requests whose notice this gateway handled (the job shows as failed).",
        )
        self.rejected = self.registry.counter(
            "imgq_submissions_rejected_total",
            "Submissions refused, by reason (the problem code of the answer).",
            ("reason",),
        )
        self._mine: OrderedDict[str, None] = OrderedDict()

    def accepted(self, job_id: str) -> None:
        """Call before the job's first event reaches the store."""
        self._mine[job_id] = None
        while len(self._mine) > _MAX_TRACKED:
            self._mine.popitem(last=False)

    # -- JobObserver -----------------------------------------------------------------------

    def job_changed(self, previous: JobEvent | None, current: JobEvent) -> None:
        if current.job_id not in self._mine:
            return
        reused = current.reused_from is not None
        queued_at = current.queued_at
        newly_started = current.started_at is not None and (
            previous is None or previous.started_at is None
        )
        if newly_started and queued_at is not None and not reused:
            assert current.started_at is not None
            # Replica and gateway clocks may differ slightly: never report a negative wait.
            self.queue_wait.observe(max(0.0, current.started_at - queued_at))
        if current.status.is_final:
            del self._mine[current.job_id]
            self.jobs.inc(model=current.model, status=current.status.value)
            if current.finished_at is not None and queued_at is not None and not reused:
                self.end_to_end.observe(max(0.0, current.finished_at - queued_at))

    def job_removed(self, job_id: str) -> None:
        self._mine.pop(job_id, None)

    def expose(self, *, long_polls: int) -> bytes:
        self.long_polls.set(long_polls)
        return self.registry.expose()
