"""The webhooks' due queue, consumed: each message read, handled (``gateway/webhooks.py``) and
settled, whatever happens, so that no message stops the consumer.

- handled: acked; a failed attempt's next one is published to its delay queue first (with a
  confirm), then the message is acked, so a retry is never lost between the two (a gateway
  killed in between leaves both, and the receiver gets a repeat with the same delivery ID);
- a retry the broker will not take: its delay queue is full, or missing (the deployment's
  setup declared another schedule): given up and acked, since trying again would not help;
- a retry the broker did not confirm, or a batch that this gateway's log has not caught up
  with: requeued, for this or another gateway to handle again;
- a message that cannot be read, or whose handling failed for a reason of its own: rejected
  (dropped), with a log line saying why.

On shutdown the transport stops consuming and gives the attempts in flight ``DRAIN_SECONDS``
to end, so a gateway restarted on purpose does not leave a receiver a repeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
from typing import Final, Protocol

from aio_pika.abc import AbstractIncomingMessage

from gateway.metrics import GatewayMetrics
from gateway.webhooks import Retry, Settle, Webhooks
from shared import wire
from shared.errors import BrokerUnavailable
from shared.logs import job_fields
from shared.messages import WebhookDelivery

log = logging.getLogger(__name__)

# Deliveries a gateway makes at once: each holds its message unacked for one attempt (at most
# webhook_http.ATTEMPT_SECONDS), so a few slow receivers do not stall the rest.
WEBHOOK_PREFETCH: Final = 32
# How long a stopping gateway lets the attempts in flight finish; those that take longer are
# cut, and their messages go to another gateway.  Inside the gateway's grace period
# (k8s: 20 s, after its 5 s preStop and 5 s HTTP shutdown).
DRAIN_SECONDS: Final = 5.0


class RetryRefused(Exception):
    """The broker refused a retry for good: its delay queue is full or does not exist."""


class RetryPublisher(Protocol):
    """What the consumer needs of the broker (``gateway.broker.GatewayBroker``)."""

    @property
    def user(self) -> str | None: ...

    async def publish_webhook_retry(self, delivery: WebhookDelivery, delay: float) -> None:
        """Return once confirmed; raise ``RetryRefused`` or ``BrokerUnavailable`` if not."""


class WebhookConsumer:
    def __init__(
        self, webhooks: Webhooks, publisher: RetryPublisher, metrics: GatewayMetrics
    ) -> None:
        self._webhooks = webhooks
        self._publisher = publisher
        self._metrics = metrics
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        self._in_flight += 1
        self._idle.clear()
        try:
            await self._take(message)
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()

    async def drained(self, seconds: float = DRAIN_SECONDS) -> None:
        """Until no message is being handled, or ``seconds`` have passed."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), seconds)

    async def _take(self, message: AbstractIncomingMessage) -> None:
        try:
            due = wire.parse_webhook(message)
        except Exception as exc:  # whatever a sender put in it
            log.warning("dropping a callback message that cannot be read: %r", exc)
            await _settle(message.reject(requeue=False), "reject")
            return
        try:
            outcome = await self._webhooks.handle(due, message.user_id, self._publisher.user)
        except Exception:
            log.exception("dropping a callback message whose handling failed")
            await _settle(message.reject(requeue=False), "reject")
            return
        if isinstance(outcome, Retry):
            outcome = await self._retry(outcome)
        if outcome is Settle.REQUEUE:
            await _settle(message.nack(requeue=True), "requeue")
        else:
            await _settle(message.ack(), "ack")

    async def _retry(self, retry: Retry) -> Settle:
        delivery = retry.delivery
        fields = job_fields(delivery.job_id, delivery.model)
        try:
            await self._publisher.publish_webhook_retry(delivery, retry.delay)
        except RetryRefused as exc:
            log.error(
                "callback %s given up: the broker will not keep it for its next attempt: %s",
                delivery.delivery_id,
                exc,
                extra=fields,
            )
            self._metrics.webhooks.labels(outcome="given_up").inc()
            return Settle.ACK
        except BrokerUnavailable as exc:
            log.warning(
                "callback %s: its retry was not confirmed (%s); the attempt will be made again",
                delivery.delivery_id,
                exc,
                extra=fields,
            )
            return Settle.REQUEUE
        return Settle.ACK


async def _settle(settling: Awaitable[None], what: str) -> None:
    try:
        await settling
    except Exception as exc:  # the channel closed: the broker requeues the message itself
        log.warning("could not %s a callback message: %r", what, exc)
