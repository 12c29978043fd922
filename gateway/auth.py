"""Bearer tokens for the JSON API, when IMGQ_API_TOKENS is set.

Everything is protected except what a browser needs to load the page and what
orchestrators probe: deny by default, so a route added later is never open by accident.
Routes are recognised by the resource the router matched, not by the raw path, so no
spelling of a path can reach a protected handler through an open prefix.
"""

from __future__ import annotations

import hmac
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Middleware

from gateway.clients import owner_of
from gateway.problems import Handler
from shared.errors import Unauthorized

# Set on a request that authenticated: a hash of its token (gateway/clients.py).
OWNER: Final = web.RequestKey("owner", str)

# Canonical route paths (as registered in app.py) that stay open with tokens set.
OPEN_ROUTES: Final = frozenset(
    {"/", "/static/{file}", "/images/{name}", "/healthz", "/readyz", "/openapi.json"}
)


def is_open(request: web.Request) -> bool:
    resource = request.match_info.route.resource
    return resource is not None and resource.canonical in OPEN_ROUTES


def token_matches(header: str | None, tokens: tuple[bytes, ...]) -> bool:
    """``Authorization: Bearer <token>`` names one of ``tokens``; compared in constant time."""
    return matching_token(header, tokens) is not None


def matching_token(header: str | None, tokens: tuple[bytes, ...]) -> bytes | None:
    """Which of ``tokens`` the ``Authorization: Bearer`` header names, if any."""
    if header is None:
        return None
    scheme, _, given = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return None
    # The parser hands over bytes that are not UTF-8 as surrogates: compare exactly the bytes
    # sent (such a header matches no token) instead of failing to encode them.
    candidate = given.strip().encode("utf-8", "surrogateescape")
    # Every token is compared (no early exit), so timing says nothing about which came close.
    matches = [hmac.compare_digest(candidate, token) for token in tokens]
    return candidate if any(matches) else None


def token_middleware(tokens: tuple[str, ...]) -> Middleware:
    """A middleware that asks for one of ``tokens`` on every route but the open ones."""
    expected = tuple(token.encode() for token in tokens)

    @web.middleware
    async def require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not is_open(request):
            header = request.headers.get("Authorization")
            if header is None:
                raise Unauthorized("this API needs a token: send 'Authorization: Bearer <token>'")
            token = matching_token(header, expected)
            if token is None:
                raise Unauthorized("the bearer token is not one this gateway accepts")
            # The client's jobs, keys and results are its own (gateway/clients.py).
            request[OWNER] = owner_of(token)
        return await handler(request)

    return require_token
