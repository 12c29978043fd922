"""Callbacks ("tell me when it's done"): what a gateway does with each message of the webhooks'
due queue.

How a callback gets here: the client names a ``callback_url`` (``gateway/callbacks.py``
checks it); it travels in the job's request and so in every event of the job, like its owner
and batch; the job's final event, whoever publishes it, carries a header that makes the broker
copy it into the due queue (``shared/topology.py``).  Every gateway consumes that queue, and
the broker gives each message to one of them, and to another if that one dies first: so
exactly one gateway delivers each callback, whichever accepted the job, and a delivery
survives a gateway's restart.

For each message (``Webhooks.handle``):

1. **Trust.**  A callback is believed only from a gateway's request (``requested_by``, as
   for the owner and batch: ``gateway/senders.py``), in an event its sender may send; a
   delivery back from a delay queue, only when a gateway published it.  Anything else is
   dropped, so a producer that is not a gateway can never make the service POST anywhere.
2. **What to send** (``gateway/webhook_payloads.py``): a job's callback at once; a batch's
   only by the gateway whose job completes the batch in the log's order, after its log has
   read that far (``gateway/batch_ends.py``).
3. **One attempt** (``gateway/webhook_http.py``), signed (``gateway/webhook_signing.py``).
   Delivered: acked.  Failed: published again to wait in the delay queue of the next delay
   (``IMGQ_WEBHOOK_RETRY_DELAYS``), then acked; after the last delay, or a 410 Gone, given
   up.  A gateway killed mid-attempt leaves the message unacked, and another gateway makes
   the attempt again: at least once, every attempt with the same delivery ID.

Imports neither aiohttp nor aio_pika: the transport settles what this decides
(``gateway/webhook_consumer.py``).
"""

from __future__ import annotations

import enum
import logging
import time
from dataclasses import dataclass, replace
from typing import Final, Protocol

from gateway import webhook_payloads
from gateway.batch_ends import BatchEnds
from gateway.batch_store import Batches
from gateway.metrics import GatewayMetrics
from gateway.senders import Senders
from gateway.store import JobStore
from gateway.webhook_http import Attempt
from gateway.webhook_signing import WebhookSecrets
from shared.logs import job_fields
from shared.messages import JobEvent, WebhookDelivery
from shared.topology import WebhookRetries
from shared.wire import WebhookDue

log = logging.getLogger(__name__)

# How long a batch job's final event waits for this gateway's log to bring it: the log lags
# the due queue by milliseconds, or by a replay's seconds after a start.  Far below the
# broker's consumer_timeout (30 minutes), which closes a channel that holds a message longer.
LOG_WAIT_SECONDS: Final = 60.0


class Poster(Protocol):
    """One attempt over HTTP (``gateway.webhook_http.WebhookPoster``)."""

    async def post(self, delivery: WebhookDelivery, secret: str) -> Attempt: ...


class Settle(enum.Enum):
    """What the transport does with the message once handled."""

    ACK = "ack"
    # Give it back to the broker, for this or another gateway to handle again.
    REQUEUE = "requeue"


@dataclass(frozen=True, slots=True)
class Retry:
    """Publish ``delivery`` to wait ``delay`` seconds before its next attempt, then ack."""

    delivery: WebhookDelivery
    delay: float


Outcome = Settle | Retry


class Webhooks:
    def __init__(
        self,
        store: JobStore,
        batches: Batches,
        ends: BatchEnds,
        senders: Senders,
        secrets: WebhookSecrets,
        poster: Poster,
        retries: WebhookRetries,
        metrics: GatewayMetrics,
    ) -> None:
        self._store = store
        self._batches = batches
        self._ends = ends
        self._senders = senders
        self._secrets = secrets
        self._poster = poster
        self._retries = retries
        self._metrics = metrics

    async def handle(self, due: WebhookDue, sender: str | None, own_user: str | None) -> Outcome:
        """One message of the due queue, published by broker user ``sender``; ``own_user`` is
        the user this gateway publishes as (gateways' requests are believed: senders.py)."""
        requesters = self._senders.requesters(own_user or "")
        if isinstance(due, WebhookDelivery):
            if sender not in requesters:
                log.warning("ignoring a callback delivery published by %r, not a gateway", sender)
                return Settle.ACK
            return await self.attempt(due)
        refusal = self._senders.refuses(due, sender)
        if refusal is None and due.requested_by not in requesters:
            refusal = f"its request came from {due.requested_by!r}, not a gateway"
        if refusal is not None:
            log.warning(
                "no callback for job %s: %s",
                due.job_id,
                refusal,
                extra=job_fields(due.job_id, due.model),
            )
            return Settle.ACK
        if due.callback is None or not due.status.is_final:
            return Settle.ACK
        if due.batch is None:
            return await self.attempt(webhook_payloads.for_job(due))
        return await self._batch(due)

    async def _batch(self, event: JobEvent) -> Outcome:
        assert event.batch is not None
        if await self._ends.wait(event.job_id, LOG_WAIT_SECONDS) is None:
            log.warning(
                "the event log has not brought job %s's final event within %g s; its batch's "
                "callback is handed back to be decided again",
                event.job_id,
                LOG_WAIT_SECONDS,
                extra=job_fields(event.job_id, event.model),
            )
            return Settle.REQUEUE
        if self._ends.last(event.batch.batch_id) != event.job_id:
            return Settle.ACK  # another job of the batch ends it, or will: its gateway delivers
        delivery = webhook_payloads.for_batch(event, self._batches, self._store)
        if delivery is None:
            log.warning(
                "no callback for batch %s: it is gone",
                event.batch.batch_id,
                extra=job_fields(event.job_id, event.model),
            )
            return Settle.ACK
        return await self.attempt(delivery)

    async def attempt(self, delivery: WebhookDelivery) -> Outcome:
        """One attempt at ``delivery``, and what follows from it."""
        fields = job_fields(delivery.job_id, delivery.model)
        what = _what(delivery)
        secret = self._secrets.for_owner(delivery.owner)
        if secret is None:
            # The token that submitted it is no longer configured: nothing would sign it.
            log.error("callback of %s given up: no secret signs it any more", what, extra=fields)
            self._metrics.webhooks.labels(outcome="given_up").inc()
            return Settle.ACK
        result = await self._poster.post(delivery, secret)
        if result.delivered:
            log.info(
                "callback of %s delivered (attempt %d, %.1f s after the first)",
                what,
                delivery.attempt,
                time.time() - delivery.first_attempt_at,
                extra=fields,
            )
            self._metrics.webhooks.labels(outcome="succeeded").inc()
            return Settle.ACK
        delay = None if result.final else self._retries.delay_after(delivery.attempt)
        if delay is None:
            log.error(
                "callback of %s given up after attempt %d: %s",
                what,
                delivery.attempt,
                result.reason,
                extra=fields,
            )
            self._metrics.webhooks.labels(outcome="given_up").inc()
            return Settle.ACK
        log.warning(
            "callback of %s failed (attempt %d of %d): %s; next attempt in %g s",
            what,
            delivery.attempt,
            self._retries.attempts,
            result.reason,
            delay,
            extra=fields,
        )
        self._metrics.webhooks.labels(outcome="retried").inc()
        return Retry(replace(delivery, attempt=delivery.attempt + 1), delay)


def _what(delivery: WebhookDelivery) -> str:
    if delivery.batch_id is not None:
        return f"batch {delivery.batch_id} ({delivery.delivery_id})"
    return f"job {delivery.job_id} ({delivery.delivery_id})"
