"""Receiving imgq's callbacks: your webhook secret, and the check of what arrives.

A gateway POSTs a finished job (or batch) to the ``callback_url`` it was submitted with,
signed as ``Imgq-Signature: t=<unix>,v1=<hex>``: HMAC-SHA256 of ``<t>.<body>`` keyed with
your webhook secret.  On a gateway with API tokens the secret is derived from your token
(``secret_for_token``); on an open gateway it is the operator's ``IMGQ_WEBHOOK_SECRET``.
Every attempt of one callback carries the same ``Imgq-Delivery`` ID: drop the ones you have
seen (``examples/webhook_receiver.py`` does both).  Standard library only.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Final

# A signature older (or newer) than this is refused: an old request replayed is not taken.
TOLERANCE_SECONDS: Final = 300


def secret_for_token(token: str) -> str:
    """Your webhook secret on a gateway with API tokens: ``HMAC-SHA256(key=token,
    "imgq-webhook-secret")`` as hex, as the gateway derives it."""
    return hmac.new(token.encode(), b"imgq-webhook-secret", hashlib.sha256).hexdigest()


def verify(secret: str, header: str, body: bytes, now: float | None = None) -> bool:
    """Whether ``header`` (the ``Imgq-Signature`` value) signs ``body`` with ``secret``,
    within ``TOLERANCE_SECONDS`` of ``now`` (this machine's clock)."""
    fields: dict[str, list[str]] = {}
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        fields.setdefault(name, []).append(value)
    try:
        timestamp = int(fields["t"][0])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > TOLERANCE_SECONDS:
        return False
    message = f"{timestamp}.".encode() + body
    expected = hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()
    return any(hmac.compare_digest(expected, given) for given in fields.get("v1", []))
