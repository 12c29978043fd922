"""Dead-lettered requests, made visible: each notice becomes a "failed" event for its job.

The work queues dead-letter a request no replica could complete (rejected as unreadable,
delivered too often) to ``imgq.dead-letter``; a copy reaches ``imgq.requests.dead.notices``,
which the gateways share.  The one that takes a notice publishes the job's "failed" event to
the log, so every gateway shows it.  Each notice is settled whatever happens: acked once its
event is published, requeued when the broker would not take the event (another try, here or on
another gateway), rejected when it cannot be handled at all, so one bad notice never holds up
the rest.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable
from typing import Final, Protocol

from aio_pika.abc import AbstractIncomingMessage

from gateway.metrics import GatewayMetrics
from shared import wire
from shared.errors import BrokerUnavailable, MessageError
from shared.logs import job_fields
from shared.messages import JobEvent, JobFailure, RequestInfo, is_job_id
from shared.states import JobStatus
from shared.topology import DELIVERY_LIMIT

log = logging.getLogger(__name__)

_REASONS: Final = {
    "delivery_limit": f"it was delivered more than {DELIVERY_LIMIT} times without completing "
    "(each attempt crashed or lost its replica)",
    "rejected": "a replica rejected it as unprocessable",
    "expired": "it expired in the queue",
    "maxlen": "the queue overflowed",
}


class EventPublisher(Protocol):
    async def publish_event(self, event: JobEvent) -> None: ...


def failed_event(
    message: AbstractIncomingMessage, replicas: frozenset[str] = frozenset()
) -> JobEvent | None:
    """The "failed" event of the dead-lettered request ``message``, or None when it names no
    job.  A version 2 request's job is read from its properties and headers: the image, which
    may be anything a producer sent, is never decoded here.  ``replicas``: the classifiers'
    broker users (IMGQ_CLASSIFIER_USERS), whose word on who sent a request it republished
    is believed."""
    try:
        info: RequestInfo | None = wire.request_info(message)
    except MessageError:
        info = None
    job_id = info.job_id if info else message.message_id
    if not is_job_id(job_id):
        return None
    assert job_id is not None
    explanation = _explanation(message)
    # Named as the request names it, when it can be read (its owner, batch, idempotency key
    # and callback too: a job's callback tells of its end here as well, gateway/webhooks.py).
    job = (
        JobEvent.for_request(info, JobStatus.FAILED)
        if info is not None
        else JobEvent(job_id, JobStatus.FAILED, "unknown", "unknown")
    )
    return job.advance(
        JobStatus.FAILED,
        # Whoever published the request, as RabbitMQ checked it: the log believes the fields
        # above only from a gateway's request (gateway/log_follower.py).
        requested_by=wire.dead_letter_requested_by(message, replicas),
        finished_at=time.time(),
        error=JobFailure("dead_lettered", f"the job was dead-lettered: {explanation}"),
    )


def _explanation(message: AbstractIncomingMessage) -> str:
    """Why: the reason a replica gave when it dead-lettered the request itself (a header of its
    own, ``wire.dead_letter_reason``), else the broker's ``x-first-death-reason``."""
    given = wire.dead_letter_reason(message)
    if given is not None:
        return given
    reason = str((message.headers or {}).get("x-first-death-reason", "unknown"))
    return _REASONS.get(reason, reason)


class DeadLetters:
    def __init__(
        self,
        publisher: EventPublisher,
        metrics: GatewayMetrics,
        replicas: frozenset[str] = frozenset(),
    ) -> None:
        self._publisher = publisher
        self._metrics = metrics
        # The classifiers' broker users (IMGQ_CLASSIFIER_USERS): see failed_event.
        self._replicas = replicas

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        """The notices consumer: one notice, settled whatever happens."""
        try:
            event = failed_event(message, self._replicas)
        except Exception as exc:  # whatever a producer's headers did to the parser
            log.warning("dropping a dead-letter notice that cannot be read: %r", exc)
            await _settle(message.reject(requeue=False), "reject")
            return
        if event is not None:
            try:
                await self._publisher.publish_event(event)
            except BrokerUnavailable as exc:
                log.warning(
                    "job %s dead-lettered; its event will be retried: %s", event.job_id, exc
                )
                await _settle(message.nack(requeue=True), "requeue")
                return
            except Exception as exc:  # not the broker's doing: trying again would not help
                log.error(
                    "dropping the dead-letter notice of job %s: publishing its event failed: %r",
                    event.job_id,
                    exc,
                    extra=job_fields(event.job_id, event.model),
                )
                await _settle(message.reject(requeue=False), "reject")
                return
            log.warning(
                "job %s dead-lettered: %s",
                event.job_id,
                _explanation(message),
                extra=job_fields(event.job_id, event.model),
            )
        self._metrics.dead_lettered.inc()
        await _settle(message.ack(), "ack")


async def _settle(settling: Awaitable[None], what: str) -> None:
    try:
        await settling
    except Exception as exc:  # the channel closed: the broker requeues the notice itself
        log.warning("could not %s a dead-letter notice: %r", what, exc)
