"""What a handler knows of a request before it reads the body: who is asking, and what they may
ask for.  Shared by every view, and by the intake that reads a job's body."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from gateway import keys
from gateway.auth import OWNER
from gateway.clients import Caller
from shared.catalog import CATALOG


def client_of(request: web.Request) -> Caller:
    """Who is asking: their token's hash on a gateway with tokens, and their address."""
    settings = request.app[keys.SETTINGS]
    limits = settings.client_limits
    # Without trusted proxies the header is never believed, so it is not even looked up; and
    # without tokens no request has an owner (a missing key costs the request an exception).
    forwarded = request.headers.get("X-Forwarded-For") if limits.trusted_proxies else None
    owner = request.get(OWNER) if settings.api_tokens else None
    return Caller(owner=owner, address=limits.client_address(request.remote, forwarded))


@dataclass(frozen=True, slots=True)
class OfferedModel:
    """A model ID a job may name: ``name`` (its default version) or ``name@version``."""

    name: str
    title: str
    input_size: int
    # None for a catalogue model no replica has announced yet.
    version: str | None = None
    # What the replica that announced it last runs it in ("fp32" until one has).
    precision: str = "fp32"


def offered(request: web.Request) -> dict[str, OfferedModel]:
    """Every model ID on offer: the configured catalogue first, then every ID a replica has
    announced since start-up (repository and torchvision models, and their versions), online
    or not: each has a work queue, where its jobs wait for a replica.  A model no replica
    could load was never announced, so it is never offered."""
    models = {
        name: OfferedModel(name, CATALOG[name].title, CATALOG[name].input_size)
        for name in request.app[keys.SETTINGS].models
    }
    for model_id, announced in request.app[keys.REPLICAS].known().items():
        if model_id in models and models[model_id].version is not None:
            continue
        models[model_id] = OfferedModel(
            announced.name or model_id,
            announced.title,
            announced.input_size,
            announced.version,
            announced.precision,
        )
    return models


def is_offered(request: web.Request, model: str) -> bool:
    """Whether a job may name ``model``; the configured catalogue is answered without
    working out the rest."""
    return model in request.app[keys.SETTINGS].models or model in offered(request)
