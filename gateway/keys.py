"""Typed application state keys."""

from __future__ import annotations

from aiohttp import web

from gateway.broker import GatewayBroker
from gateway.gallery import Gallery
from gateway.replicas import ReplicaRegistry
from gateway.settings import GatewaySettings
from gateway.store import JobStore

SETTINGS = web.AppKey("settings", GatewaySettings)
STORE = web.AppKey("store", JobStore)
REPLICAS = web.AppKey("replicas", ReplicaRegistry)
GALLERY = web.AppKey("gallery", Gallery)
BROKER = web.AppKey("broker", GatewayBroker)
