"""The replica's Prometheus metrics, and the small HTTP listener that serves them.

The replica has no HTTP API otherwise; this listener is separate from the broker work
and only answers GET /metrics.  It must never cost a job: if its port cannot be bound
(taken by another replica on the same host, say) the replica logs that and works on.
"""

from __future__ import annotations

import logging
from typing import Final

from aiohttp import web

from shared.metrics import CONTENT_TYPE, Registry

log = logging.getLogger(__name__)

# Seconds per batch on a CPU: from a few ms (Lite0, one small image) to seconds (big batches).
INFERENCE_BUCKETS: Final = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# Up to IMGQ_BATCH_SIZE; powers of two cover any sensible setting.
BATCH_BUCKETS: Final = (1, 2, 4, 8, 16, 32, 64)


class ReplicaMetrics:
    def __init__(self) -> None:
        self.registry = Registry()
        self.inference = self.registry.histogram(
            "imgq_inference_seconds",
            "Seconds of inference per batch (decode, preprocess and forward pass), by model.",
            INFERENCE_BUCKETS,
            ("model",),
        )
        self.batch_size = self.registry.histogram(
            "imgq_batch_size", "Jobs per batch run as one forward pass.", BATCH_BUCKETS
        )
        self.jobs = self.registry.counter(
            "imgq_jobs_total",
            "Jobs this replica finished, by model and final status.",
            ("model", "status"),
        )
        self.redeliveries = self.registry.counter(
            "imgq_redeliveries_total",
            "Requests delivered again after a replica failed to finish them (or a requeue).",
        )
        self.dead_lettered = self.registry.counter(
            "imgq_dead_lettered_total",
            "Requests this replica rejected to the dead-letter queue as unprocessable.",
        )

    def batch_done(self, model: str, jobs: int, seconds: float) -> None:
        self.inference.observe(seconds, model=model)
        self.batch_size.observe(jobs)


async def start_server(metrics: ReplicaMetrics, host: str, port: int) -> web.AppRunner | None:
    """Serve /metrics on ``host:port``; ``None`` when off (port 0) or the port is taken."""
    if port == 0:
        return None

    async def expose(request: web.Request) -> web.Response:
        return web.Response(body=metrics.registry.expose(), headers={"Content-Type": CONTENT_TYPE})

    app = web.Application()
    app.router.add_get("/metrics", expose)
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
