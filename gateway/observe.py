"""Each request observed once: its route and final status, for the metrics and the trace.

Outermost middleware, so what it records is what the client got, after ``problem_middleware``
turned an error into its problem response.  It feeds the HTTP metrics (a count by route,
method and status, a duration by route) and, while tracing is on, the request's server span
(``shared.tracing.server_span``), which is current while the handler runs so that the
publish of a job joins the request's trace.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Handler

from gateway import keys
from shared import tracing

# A request no route matched (a 404 or 405): its path is the client's choice, so all of
# them share one label rather than adding a series per path tried.
UNMATCHED: Final = "unmatched"
# While tracing is off: no span to open per request (server_span would make a no-op one).
_UNTRACED: Final = contextlib.nullcontext(tracing.ServerSpan())


def _route(request: web.Request) -> str | None:
    # A 404 or 405 resolves to aiohttp's system route, which has no resource.
    resource = request.match_info.route.resource
    return None if resource is None else resource.canonical


@web.middleware
async def observe_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    route = _route(request)
    started = time.perf_counter()
    status = 500  # what the client gets if an exception escapes every middleware
    error: BaseException | None = None
    with (
        tracing.server_span(
            request.method, route or "", request.path, request.scheme, request.headers
        )
        if tracing.active()
        else _UNTRACED
    ) as span:
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        except asyncio.CancelledError:
            # The handler was stopped (the gateway shutting down under a held long-poll, or
            # the client gone): nginx's 499, "closed before the answer", rather than a 500
            # nobody was sent; the span gets no status at all.
            status = 499
            raise
        except Exception as exc:
            error = exc
            raise
        finally:
            span.answered(None if status == 499 else status, error)
            request.app[keys.METRICS].http_answered(
                route or UNMATCHED, request.method, status, time.perf_counter() - started
            )
