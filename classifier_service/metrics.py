"""The replica's Prometheus metrics, and the small HTTP listener that serves them.

The replica has no HTTP API otherwise; this listener is separate from the broker work
and only answers GET /metrics.  It must never cost a job: if its port cannot be bound
(taken by another replica on the same host, say) the replica logs that and works on.
"""

from __future__ import annotations

import logging
from typing import Final

from aiohttp import web
from prometheus_client import Counter, Histogram

from shared.metrics import CONTENT_TYPE, expose, new_registry

log = logging.getLogger(__name__)

# Seconds per batch: from 5 ms (Lite0, one small image, on a GPU) to 10 s (a big batch of
# large models on a busy CPU); 30 s catches what runs toward IMGQ_JOB_TIME_LIMIT.
INFERENCE_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# Up to IMGQ_BATCH_SIZE; powers of two cover any sensible setting.
BATCH_BUCKETS: Final = (1, 2, 4, 8, 16, 32, 64)


class ReplicaMetrics:
    def __init__(self) -> None:
        self.registry = registry = new_registry()
        self.inference = Histogram(
            "imgq_inference_seconds",
            "Seconds of inference per batch (decode, preprocess and forward pass), by model.",
            ("model",),
            buckets=INFERENCE_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "imgq_batch_size",
            "Jobs per batch run as one forward pass, by model.",
            ("model",),
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.jobs = Counter(
            "imgq_replica_jobs_total",
            "Jobs this replica finished, by model and final status.",
            ("model", "status"),
            registry=registry,
        )
        self.redeliveries = Counter(
            "imgq_redeliveries_total",
            "Requests delivered again after a replica failed to finish them (or a requeue).",
            registry=registry,
        )
        self.dead_lettered = Counter(
            "imgq_replica_dead_lettered_total",
            "Requests this replica rejected to the dead-letter queue as unprocessable.",
            registry=registry,
        )

    def batch_done(self, model: str, jobs: int, seconds: float) -> None:
        self.inference.labels(model=model).observe(seconds)
        self.batch_size.labels(model=model).observe(jobs)

    def job_done(self, model: str, status: str) -> None:
        self.jobs.labels(model=model, status=status).inc()


async def start_server(metrics: ReplicaMetrics, host: str, port: int) -> web.AppRunner | None:
    """Serve /metrics on ``host:port``; ``None`` when off (port 0) or the port is taken."""
    if port == 0:
        return None

    async def serve_metrics(request: web.Request) -> web.Response:
        return web.Response(body=expose(metrics.registry), headers={"Content-Type": CONTENT_TYPE})

    app = web.Application()
    app.router.add_get("/metrics", serve_metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        log.warning("metrics not served: cannot listen on %s:%d (%s)", host, port, exc)
        await runner.cleanup()
        return None
    log.info("metrics on http://%s:%d/metrics", host, port)
    return runner
