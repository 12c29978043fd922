"""Application factory: nothing happens at import time."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web
from aiohttp.typedefs import Middleware

from gateway import batches, keys, siblings, sse, status, views
from gateway.activity import Activity
from gateway.auth import token_middleware
from gateway.batch_store import Batches
from gateway.bodies import BodyBytes
from gateway.broker import GatewayBroker
from gateway.callbacks import CallbackRules
from gateway.checks import ImageChecks
from gateway.clients import OpenWaits, RateLimiter
from gateway.gallery import Gallery
from gateway.headers import add_security_headers
from gateway.lifeline import Lifeline
from gateway.limits import MAX_CONCURRENT_CHECKS, MAX_REQUEST_BYTES, MAX_WAITING_CHECKS
from gateway.log_follower import LogFollower
from gateway.metrics import GatewayMetrics
from gateway.observe import observe_middleware
from gateway.problems import problem_middleware
from gateway.processes import Worker
from gateway.replicas import ReplicaRegistry
from gateway.settings import GatewaySettings
from gateway.shares import ClientShares, JobShares
from gateway.store import JobStore
from gateway.submissions import Jobs
from gateway.webhook_http import WebhookPoster
from gateway.webhook_signing import WebhookSecrets
from gateway.webhooks import Webhooks

log = logging.getLogger(__name__)


async def _poster_ctx(app: web.Application) -> AsyncIterator[None]:
    # Started before the broker and closed after it: the broker's close lets the callback
    # attempts in flight end first.
    poster = app[keys.WEBHOOK_POSTER]
    await poster.start()
    yield
    await poster.close()


async def _broker_ctx(app: web.Application) -> AsyncIterator[None]:
    broker = app[keys.BROKER]
    await broker.start()
    yield
    await broker.close()


async def _stop_image_checks(app: web.Application) -> None:
    app[keys.IMAGE_CHECKS].close()


async def _release_long_polls(app: web.Application) -> None:
    # On shutdown every held long-poll answers at once with the job's current state, and
    # every event stream ends.
    app[keys.STORE].release_all()


def create_app(settings: GatewaySettings, worker: Worker | None = None) -> web.Application:
    """The gateway; ``worker`` says which process it is when several share its port."""
    # Observed outermost (metrics and the server span), so what is recorded is what the client
    # got, problems and refusals included.
    middlewares: list[Middleware] = [observe_middleware, problem_middleware]
    if settings.api_tokens:
        # Inside the problem middleware, so a refusal is a problem like any other.
        middlewares.append(token_middleware(settings.api_tokens))
        log.info("API tokens required (%d configured)", len(settings.api_tokens))
    # The default client_max_size (1 MiB) would refuse photos; intake.py reads bodies itself,
    # streamed, and caps each upload at MAX_UPLOAD_BYTES and small bodies at far less.
    app = web.Application(middlewares=middlewares, client_max_size=MAX_REQUEST_BYTES)
    activity = Activity()
    metrics = GatewayMetrics()
    replicas = ReplicaRegistry()
    limits = settings.client_limits
    # Told by the store when each job ends, which gives its seat back.
    job_shares = JobShares(limits.jobs, lambda: len(replicas.online()))
    store = JobStore(
        ttl=settings.job_ttl,
        max_jobs=settings.max_jobs,
        observers=(activity, metrics, job_shares),
    )
    app[keys.SETTINGS] = settings
    app[keys.STORE] = store
    app[keys.REPLICAS] = replicas
    app[keys.ACTIVITY] = activity
    app[keys.METRICS] = metrics
    app[keys.GALLERY] = Gallery.load(settings.gallery_dir)
    batch_records = Batches(store)
    app[keys.BATCHES] = batch_records
    lifeline = Lifeline()
    app[keys.LIFELINE] = lifeline
    follower = LogFollower(store, batch_records, settings.senders)
    hooks = settings.webhooks
    secrets = WebhookSecrets(settings.api_tokens, hooks.secret)
    app[keys.CALLBACKS] = CallbackRules(secrets.can_sign, hooks.policy)
    poster = WebhookPoster(hooks.policy)
    app[keys.WEBHOOK_POSTER] = poster
    webhooks = Webhooks(
        store,
        batch_records,
        follower.batch_ends,
        settings.senders,
        secrets,
        poster,
        hooks.retries,
        metrics,
    )
    broker = GatewayBroker(
        settings, follower, replicas, metrics, on_death=lifeline.task_died, webhooks=webhooks
    )
    app[keys.BROKER] = broker
    app[keys.JOBS] = Jobs(store, broker, metrics)
    app[keys.SHARES] = ClientShares(job_shares, RateLimiter(limits.rate, limits.burst))
    app[keys.BODIES] = BodyBytes(limits.body_bytes, settings.body_bytes)
    app[keys.OPEN_WAITS] = OpenWaits(limits.waits, limits.stream_seconds)
    # Threads start only when the first upload is checked.
    app[keys.IMAGE_CHECKS] = ImageChecks(MAX_CONCURRENT_CHECKS, MAX_WAITING_CHECKS)
    app.cleanup_ctx.append(_poster_ctx)
    app[keys.WORKER] = worker
    app.cleanup_ctx.append(_broker_ctx)
    if worker is not None and worker.count > 1:
        app.cleanup_ctx.append(siblings.serve_own)
    app.on_cleanup.append(_stop_image_checks)
    app.on_shutdown.append(_release_long_polls)
    app.on_response_prepare.append(add_security_headers)

    app.router.add_get("/", views.index)
    app.router.add_get("/static/{file}", views.static_asset)
    app.router.add_get("/info", views.info)
    app.router.add_post("/classifications", views.submit)
    app.router.add_get("/classifications/{job_id}", views.job_status)
    app.router.add_delete("/classifications/{job_id}", views.delete_job)
    app.router.add_get("/classifications/{job_id}/events", sse.job_events)
    app.router.add_post("/batches", batches.submit_batch)
    app.router.add_get("/batches/{batch_id}", batches.batch_status)
    app.router.add_get("/status", status.status)
    app.router.add_get("/metrics", status.metrics)
    app.router.add_get("/images/{name}", views.gallery_image)
    app.router.add_get("/healthz", views.healthz)
    app.router.add_get("/readyz", views.readyz)
    app.router.add_get("/openapi.json", views.openapi)
    return app
