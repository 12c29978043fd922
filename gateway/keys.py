"""Typed application state keys."""

from __future__ import annotations

from aiohttp import web

from gateway.activity import Activity
from gateway.batch_store import Batches
from gateway.bodies import BodyBytes
from gateway.broker import GatewayBroker
from gateway.callbacks import CallbackRules
from gateway.checks import ImageChecks
from gateway.clients import OpenWaits
from gateway.gallery import Gallery
from gateway.lifeline import Lifeline
from gateway.metrics import GatewayMetrics
from gateway.processes import Worker
from gateway.replicas import ReplicaRegistry
from gateway.settings import GatewaySettings
from gateway.shares import ClientShares
from gateway.store import JobStore
from gateway.submissions import Jobs
from gateway.webhook_http import WebhookPoster

SETTINGS = web.AppKey("settings", GatewaySettings)
STORE = web.AppKey("store", JobStore)
# Long-polls and event streams each client holds open (bounded per client).
OPEN_WAITS = web.AppKey("open_waits", OpenWaits)
# Accept, cancel and forget: what the submission views call.
JOBS = web.AppKey("jobs", Jobs)
REPLICAS = web.AppKey("replicas", ReplicaRegistry)
GALLERY = web.AppKey("gallery", Gallery)
BROKER = web.AppKey("broker", GatewayBroker)
ACTIVITY = web.AppKey("activity", Activity)
METRICS = web.AppKey("metrics", GatewayMetrics)
# Threads that check uploaded images (decoding must not block the event loop), bounded.
IMAGE_CHECKS = web.AppKey("image_checks", ImageChecks)
# Batches accepted by this gateway (POST /batches): job IDs by batch ID, bounded.
BATCHES = web.AppKey("batches", Batches)
# Each client's share of the fleet: jobs in flight (and a rate, if set), charged per request.
SHARES = web.AppKey("shares", ClientShares)
# Request-body bytes held in memory, per client and in all, bounded.
BODIES = web.AppKey("bodies", BodyBytes)
# Whether a background task died (the process then exits non-zero).
LIFELINE = web.AppKey("lifeline", Lifeline)
# What a submission's callback_url must be (gateway/callbacks.py).
CALLBACKS = web.AppKey("callbacks", CallbackRules)
# Makes the callbacks' HTTP requests (gateway/webhook_http.py): a client session, opened at
# start-up.
WEBHOOK_POSTER = web.AppKey("webhook_poster", WebhookPoster)
# Which of several gateway processes on one port this is (gateway/processes.py); None when
# the gateway is one process.
WORKER = web.AppKey[Worker | None]("worker")
