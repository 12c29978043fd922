"""How a callback is signed, so that its receiver can tell it came from this service, unchanged.

Stripe's scheme: the header ``Imgq-Signature: t=<unix seconds>,v1=<hex>``, where the hex is
HMAC-SHA256, keyed with the client's webhook secret, of ``<t>.<body>`` (the timestamp, a dot
and the exact bytes of the body).  Signing the timestamp with the body lets the receiver refuse
an old request replayed to it (``verify``: more than 5 minutes away from its clock); the
delivery ID in the body (and its header) lets it drop a repeat of one it has handled.

**Whose secret.**  On a gateway with API tokens each client's callbacks are signed with a
secret derived from its own token, ``HMAC-SHA256(key=<token>, "imgq-webhook-secret")`` in hex
(``secret_for_token``): the client computes it from the token it already holds, and the
operator configures nothing per client.  Anyone with the token could forge that client's
callbacks, but the token already lets them act as the client.  A job submitted without a token
(an open gateway) is signed with ``IMGQ_WEBHOOK_SECRET``.  A gateway with neither sends no
callbacks: it refuses a ``callback_url`` rather than send unsigned requests.

Imports neither aiohttp nor aio_pika.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from typing import Final

from gateway.clients import owner_of

SIGNATURE_HEADER: Final = "Imgq-Signature"
TIMESTAMP_HEADER: Final = "Imgq-Timestamp"
DELIVERY_HEADER: Final = "Imgq-Delivery"
EVENT_HEADER: Final = "Imgq-Event"
ATTEMPT_HEADER: Final = "Imgq-Attempt"
# What a token's secret is derived from it with: fixed, so that a client can compute it.
SECRET_LABEL: Final = b"imgq-webhook-secret"
# How far a receiver should let a signature's timestamp be from its own clock: wide enough
# for clocks that drift, narrow enough that a captured request is soon useless.
TOLERANCE_SECONDS: Final = 300


def secret_for_token(token: str | bytes) -> str:
    """The webhook secret of the client that holds API token ``token``."""
    key = token.encode() if isinstance(token, str) else token
    return hmac.new(key, SECRET_LABEL, hashlib.sha256).hexdigest()


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The ``Imgq-Signature`` header's value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify(
    secret: str, header: str, body: bytes, now: float, tolerance: float = TOLERANCE_SECONDS
) -> bool:
    """Whether ``header`` signs ``body`` with ``secret`` at a time within ``tolerance`` of
    ``now``: what a receiver does (examples/webhook_receiver.py does the same)."""
    fields: dict[str, list[str]] = {}
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        fields.setdefault(name, []).append(value)
    try:
        timestamp = int(fields["t"][0])
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > tolerance:
        return False
    expected = signature(secret, timestamp, body).rpartition("v1=")[2]
    # Any v1 that matches: a sender may list more than one while its secret changes.
    return any(hmac.compare_digest(expected, given) for given in fields.get("v1", []))


class WebhookSecrets:
    """The secret that signs a client's callbacks, by the owner its jobs carry."""

    def __init__(self, tokens: Iterable[str], configured: str | None) -> None:
        self._by_owner = {owner_of(token.encode()): secret_for_token(token) for token in tokens}
        self._configured = configured

    def for_owner(self, owner: str | None) -> str | None:
        """None when there is none: a token no longer configured, or an open gateway without
        ``IMGQ_WEBHOOK_SECRET``."""
        if owner is None:
            return self._configured
        return self._by_owner.get(owner)

    def can_sign(self, owner: str | None) -> bool:
        return self.for_owner(owner) is not None
