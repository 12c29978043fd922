"""The gateway's Prometheus metrics (served at GET /metrics).

Job counts and latencies cover the jobs *this* gateway accepted, not every job it reads
from the shared event log: each job is counted by exactly one gateway, so summing a metric
over all gateways gives the fleet's figure, and a restarted gateway does not count its
replay again.  Dead letters are counted by whichever gateway consumed the notice (the
notices queue has competing consumers), which keeps the same property.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Final

from prometheus_client import Counter, Gauge, Histogram

from shared.messages import JobEvent
from shared.metrics import LATENCY_BUCKETS, expose, new_registry

# Seconds to answer an HTTP request: most take milliseconds; long-polls are held up to
# IMGQ_MAX_WAIT (30 s) and event streams for minutes, so the top buckets catch those.
HTTP_BUCKETS: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
)

# Each is shown from the start, at 0, so a dashboard's rate is never "no data".
WEBHOOK_OUTCOMES: Final = ("succeeded", "retried", "given_up")

# Jobs accepted here and not yet final.  Bounded: a job whose final event never comes (its
# log entries expired) must not pin memory forever.
_MAX_TRACKED: Final = 100_000
# Label sets of the HTTP metrics whose series are kept at hand.  Routes are few, but the method
# is the client's: past this many, the cache starts again rather than grow.
_MAX_HTTP_SERIES: Final = 1000


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = registry = new_registry()
        self.jobs = Counter(
            "imgq_gateway_jobs_total",
            "Jobs accepted by this gateway that reached a final state, by model and status.",
            ("model", "status"),
            registry=registry,
        )
        self.queue_wait = Histogram(
            "imgq_queue_wait_seconds",
            "Seconds from acceptance to a replica starting the job (reused results excluded).",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.end_to_end = Histogram(
            "imgq_end_to_end_seconds",
            "Seconds from acceptance to the final state (reused results excluded).",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.long_polls = Gauge(
            "imgq_long_polls_waiting",
            "Requests (long-polls and event streams) waiting for a job to change.",
            registry=registry,
        )
        self.result_reuse = Counter(
            "imgq_result_reuse_total",
            "Jobs answered at once with the result of an earlier job on identical input.",
            registry=registry,
        )
        self.dead_lettered = Counter(
            "imgq_gateway_dead_lettered_total",
            "Dead-lettered requests whose notice this gateway handled (the job shows as failed).",
            registry=registry,
        )
        self.rejected = Counter(
            "imgq_submissions_rejected_total",
            "Submissions refused, by reason (the problem code of the answer).",
            ("reason",),
            registry=registry,
        )
        self.queue_depth = Gauge(
            "imgq_queue_depth",
            "Jobs waiting in each work queue, read from the broker when scraped "
            "(a queue the broker did not answer for is left out).",
            ("queue",),
            registry=registry,
        )
        # Route is the resource's pattern (/classifications/{job_id}), never the raw path:
        # one series per job ID would grow without bound.
        self.http_requests = Counter(
            "imgq_http_requests_total",
            "HTTP requests answered, by route pattern, method and status.",
            ("route", "method", "status"),
            registry=registry,
        )
        self.http_duration = Histogram(
            "imgq_http_request_duration_seconds",
            "Seconds from receiving an HTTP request to its handler's return, by route pattern.",
            ("route",),
            buckets=HTTP_BUCKETS,
            registry=registry,
        )
        # Counted by the gateway that made the attempt (the due queue has competing
        # consumers), so summing over gateways gives the fleet's figure.
        self.webhooks = Counter(
            "imgq_webhook_deliveries_total",
            "Callback attempts by outcome: succeeded (the receiver answered 2xx), retried (it "
            "did not; another attempt waits), given_up (the last attempt failed, or the receiver "
            "answered 410, or nothing signs it any more).",
            ("outcome",),
            registry=registry,
        )
        for outcome in WEBHOOK_OUTCOMES:
            self.webhooks.labels(outcome=outcome)
        self._mine: OrderedDict[str, None] = OrderedDict()
        # The series of each (route, method, status) seen: ``labels()`` checks and joins its
        # values and takes a lock on every call, a cost paid on every request otherwise.
        self._http_series: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    def http_answered(self, route: str, method: str, status: int, seconds: float) -> None:
        """One HTTP request answered: counted by route, method and status, timed by route."""
        key = (route, method, status)
        series = self._http_series.get(key)
        if series is None:
            if len(self._http_series) >= _MAX_HTTP_SERIES:
                self._http_series.clear()
            series = (
                self.http_requests.labels(route=route, method=method, status=str(status)),
                self.http_duration.labels(route=route),
            )
            self._http_series[key] = series
        counted, timed = series
        counted.inc()
        timed.observe(seconds)

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
            self.jobs.labels(model=current.model, status=current.status.value).inc()
            if current.finished_at is not None and queued_at is not None and not reused:
                self.end_to_end.observe(max(0.0, current.finished_at - queued_at))

    def job_removed(self, job_id: str) -> None:
        self._mine.pop(job_id, None)

    def expose(self, *, long_polls: int, queue_depths: Mapping[str, int | None]) -> bytes:
        """The exposition, with the values read at scrape time set first."""
        self.long_polls.set(long_polls)
        # Cleared first: a queue that is gone, or that the broker did not answer for, shows
        # as absent rather than as its last depth.
        self.queue_depth.clear()
        for queue, depth in queue_depths.items():
            if depth is not None:
                self.queue_depth.labels(queue=queue).set(depth)
        return expose(self.registry)
