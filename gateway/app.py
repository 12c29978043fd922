"""Application factory: nothing happens at import time."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web

from gateway import keys, views
from gateway.broker import GatewayBroker
from gateway.gallery import Gallery
from gateway.problems import problem_middleware
from gateway.replicas import ReplicaRegistry
from gateway.settings import GatewaySettings
from gateway.store import JobStore

log = logging.getLogger(__name__)


async def _broker_ctx(app: web.Application) -> AsyncIterator[None]:
    broker = app[keys.BROKER]
    await broker.start()
    yield
    await broker.close()


async def _release_long_polls(app: web.Application) -> None:
    # On shutdown every held long-poll answers at once with the job's current state.
    app[keys.STORE].release_all()


def create_app(settings: GatewaySettings) -> web.Application:
    app = web.Application(middlewares=[problem_middleware])
    store = JobStore(ttl=settings.job_ttl, max_jobs=settings.max_jobs)
    replicas = ReplicaRegistry()
    app[keys.SETTINGS] = settings
    app[keys.STORE] = store
    app[keys.REPLICAS] = replicas
    app[keys.GALLERY] = Gallery.load(settings.gallery_dir)
    app[keys.BROKER] = GatewayBroker(settings, store, replicas)
    app.cleanup_ctx.append(_broker_ctx)
    app.on_shutdown.append(_release_long_polls)

    app.router.add_get("/", views.index)
    app.router.add_static("/static", views.STATIC_DIR)
    app.router.add_get("/info", views.info)
    app.router.add_post("/classifications", views.submit)
    app.router.add_get("/classifications/{job_id}", views.job_status)
    app.router.add_delete("/classifications/{job_id}", views.delete_job)
    app.router.add_get("/images/{name}", views.gallery_image)
    app.router.add_get("/healthz", views.healthz)
    app.router.add_get("/readyz", views.readyz)
    app.router.add_get("/openapi.json", views.openapi)
    return app
