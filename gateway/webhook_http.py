"""One attempt at a callback over HTTP: signed, to an address checked just now, bounded.

- The host is resolved at every attempt, and the connection goes only to addresses the
  policy allows (``gateway/callbacks.py``): the resolver aiohttp connects through checks
  what it returns, so the address checked is the address connected to, whatever DNS said
  when the job was submitted.  An IP address in the URL is checked here, since aiohttp does
  not resolve one.
- Redirects are not followed (a 3xx is a failed attempt): a redirect could point anywhere.
- An attempt has ``ATTEMPT_SECONDS`` in all; at most ``PEEK_BYTES`` of the answer are read,
  for the log line of a refusal, and the rest is never read.
- No proxy from the environment: the connection is the one that was checked.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from typing import Final

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from gateway.callbacks import AddressPolicy, ip_literal
from gateway.webhook_signing import (
    ATTEMPT_HEADER,
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    signature,
)
from shared.messages import WebhookDelivery

# A receiver should answer at once and do its work after; one that takes longer is retried
# later rather than hold a gateway's delivery (and the broker's message) for long.
ATTEMPT_SECONDS: Final = 10.0
CONNECT_SECONDS: Final = 5.0
# Enough of a refusal's body to say in the log what the receiver objected to.
PEEK_BYTES: Final = 512
# Connections at once, all receivers together: more than the attempts a gateway makes at once
# (gateway/webhook_consumer.py's WEBHOOK_PREFETCH), so no attempt waits for a connection.
MAX_CONNECTIONS: Final = 64
USER_AGENT: Final = "imgq-webhooks/1"
# The receiver asks never to be called again at this URL: no more attempts.
GONE: Final = 410


class AddressRefused(OSError):
    """A callback's host resolves to an address the policy does not allow."""


class CheckedResolver(AbstractResolver):
    """The system resolver, refusing a host with any address that callbacks may not reach."""

    def __init__(self, policy: AddressPolicy) -> None:
        self._policy = policy
        self._inner = aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for result in results:
            why = self._policy.refusal(result["host"])
            if why is not None:
                raise AddressRefused(f"{host} resolves to {result['host']}, {why}")
        return results

    async def close(self) -> None:
        await self._inner.close()


@dataclass(frozen=True, slots=True)
class Attempt:
    """How one attempt went."""

    delivered: bool
    # Why it was not delivered, in words for the log.
    reason: str = ""
    # The receiver answered 410 Gone: try no more.
    final: bool = False


class WebhookPoster:
    def __init__(self, policy: AddressPolicy, seconds: float = ATTEMPT_SECONDS) -> None:
        self._policy = policy
        self._seconds = seconds
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            resolver=CheckedResolver(self._policy),
            # Resolved (and checked) again for every new connection.
            use_dns_cache=False,
            limit=MAX_CONNECTIONS,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self._seconds, connect=CONNECT_SECONDS),
            trust_env=False,
            # What a receiver answers is peeked at, never inflated.
            auto_decompress=False,
            skip_auto_headers=("Accept-Encoding",),
            headers={"User-Agent": USER_AGENT},
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def post(self, delivery: WebhookDelivery, secret: str) -> Attempt:
        """One attempt: POST the delivery's body, signed with ``secret``."""
        session = self._session
        if session is None:
            return Attempt(False, "the gateway is shutting down")
        url = URL(delivery.url)
        literal = ip_literal(url.raw_host or "")
        if literal is not None:
            why = self._policy.refusal(literal)
            if why is not None:
                return Attempt(False, f"the callback's address {literal} is {why}")
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            DELIVERY_HEADER: delivery.delivery_id,
            EVENT_HEADER: delivery.event,
            ATTEMPT_HEADER: str(delivery.attempt),
            TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: signature(secret, timestamp, delivery.body),
        }
        try:
            async with session.post(
                url, data=delivery.body, headers=headers, allow_redirects=False
            ) as response:
                if 200 <= response.status < 300:
                    return Attempt(True)
                peek = await response.content.read(PEEK_BYTES)
        except aiohttp.ClientConnectorDNSError as exc:
            return Attempt(False, f"could not resolve the callback's host: {exc.os_error}")
        except TimeoutError:
            return Attempt(False, f"no answer within {self._seconds:g} s")
        except aiohttp.ClientError as exc:
            return Attempt(False, f"the request failed: {exc!r}")
        said = peek.decode("utf-8", "replace").strip()
        reason = f"the receiver answered {response.status}" + (f": {said!r}" if said else "")
        if 300 <= response.status < 400:
            reason += " (redirects are not followed)"
        return Attempt(False, reason, final=response.status == GONE)
