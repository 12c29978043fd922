"""Operator views: GET /status (for the live status page) and GET /metrics (Prometheus)."""

from __future__ import annotations

from aiohttp import web

from gateway import keys, siblings
from gateway.context import offered
from gateway.views import json_response
from shared.metrics import CONTENT_TYPE


async def status(request: web.Request) -> web.Response:
    """Replicas, queue depth and recent activity: no job IDs, no image names."""
    activity = request.app[keys.ACTIVITY]
    replicas = sorted(request.app[keys.REPLICAS].online(), key=lambda beat: beat.replica)
    broker = request.app[keys.BROKER]
    answered = await broker.queue_depths(broker.work_queues(offered(request)))
    # A queue the broker did not answer for (or that does not exist yet) is left out.
    depths = {name: depth for name, depth in answered.items() if depth is not None}
    return json_response(
        {
            "replicas": [
                {
                    "replica": beat.replica,
                    "models": list(beat.models),
                    "jobs_done": beat.jobs_done,
                    "busy": beat.busy,
                    "last_seen": beat.at,
                    "restarts": beat.restarts,
                    "stalled": beat.stalled,
                }
                for beat in replicas
            ],
            "queue_depth": sum(depths.values()) if depths else None,
            # Each model's work queue, and the shared queue of requests no model queue took.
            "queues": depths or None,
            # The broker's nodes (one unless it is a cluster), each probed now.
            "broker": {"nodes": await request.app[keys.BROKER].nodes()},
            "jobs_per_second": round(activity.jobs_per_second(), 4),
            "recent": activity.recent(),
        }
    )


async def metrics(request: web.Request) -> web.Response:
    broker = request.app[keys.BROKER]
    depths = await broker.queue_depths(broker.work_queues(offered(request)))
    if request.app[keys.WORKER] is not None:
        # One of several processes on this port: all of theirs (gateway/siblings.py).
        body = await siblings.gathered(request.app, depths)
    else:
        body = request.app[keys.METRICS].expose(
            long_polls=request.app[keys.STORE].waiting, queue_depths=depths
        )
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})
