"""Operator views: GET /status (for the live status page) and GET /metrics (Prometheus)."""

from __future__ import annotations

from aiohttp import web

from gateway import keys
from gateway.views import json_response, offered
from shared.metrics import CONTENT_TYPE


async def status(request: web.Request) -> web.Response:
    """Replicas, queue depth and recent activity: no job IDs, no image names."""
    activity = request.app[keys.ACTIVITY]
    replicas = sorted(request.app[keys.REPLICAS].online(), key=lambda beat: beat.replica)
    depths = await request.app[keys.BROKER].queue_depths(offered(request))
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
                }
                for beat in replicas
            ],
            "queue_depth": None if depths is None else sum(depths.values()),
            # Each model's work queue, and the shared queue of requests no model queue took.
            "queues": depths,
            # The broker's nodes (one unless it is a cluster), each probed now.
            "broker": {"nodes": await request.app[keys.BROKER].nodes()},
            "jobs_per_second": round(activity.jobs_per_second(), 4),
            "recent": activity.recent(),
        }
    )


async def metrics(request: web.Request) -> web.Response:
    body = request.app[keys.METRICS].expose(long_polls=request.app[keys.STORE].waiting)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})
