"""HTTP request metrics: a count by route, method and status, and a duration by route.

Outermost middleware, so the status counted is the one the client got, after
``problem_middleware`` turned an error into its problem response.
"""

from __future__ import annotations

import asyncio
import time
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Handler

from gateway import keys

# A request no route matched (a 404 or 405): its path is the client's choice, so all of
# them share one label rather than adding a series per path tried.
UNMATCHED: Final = "unmatched"


def _route(request: web.Request) -> str:
    # A 404 or 405 resolves to aiohttp's system route, which has no resource.
    resource = request.match_info.route.resource
    return UNMATCHED if resource is None else resource.canonical


@web.middleware
async def http_metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    metrics = request.app[keys.METRICS]
    started = time.perf_counter()
    status = 500  # what the client gets if an exception escapes every middleware
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    except asyncio.CancelledError:
        # The handler was stopped (the gateway shutting down under a held long-poll):
        # nginx's 499, "closed before the answer", rather than a 500 nobody was sent.
        status = 499
        raise
    finally:
        route = _route(request)
        metrics.http_requests.labels(route=route, method=request.method, status=str(status)).inc()
        metrics.http_duration.labels(route=route).observe(time.perf_counter() - started)
