"""The guard at the door: one delivery in, a job to run out, or the delivery settled.

``Admission.admit`` reads and checks one request.  A request that can never succeed is
dead-lettered with its reason (unreadable, unknown model, poison); one cancelled while queued
is skipped; a job that crashed a replica before runs alone.  Whatever goes wrong with one
delivery, parsing, checking, publishing or acking, settles *that* delivery and is logged:
no exception leaves ``admit``, so one bad message never stops the batch loop.

Dead letters are republished to the dead-letter exchange with the reason in their
``dead_reason`` header (``shared.wire.dead_letter_message``), confirmed, then acked: RabbitMQ's
own dead-lettering (reject) keeps a message's headers but cannot add one, and the operator
reading the dead-letter queue should see why.  The price is one publish, on the bad path only.
Should that publish fail, the delivery is rejected instead (the broker dead-letters it as
"rejected"), and the reason is in the log either way.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass

from aio_pika.abc import AbstractIncomingMessage

from classifier_service.acks import AckBook
from classifier_service.inbox import channel_open
from classifier_service.metrics import ReplicaMetrics
from classifier_service.notices import Notices
from classifier_service.publisher import Publisher
from shared import wire
from shared.errors import MessageError, UnknownModel
from shared.logs import job_fields
from shared.messages import ClassifyRequest, JobEvent, JobFailure
from shared.states import JobStatus
from shared.topology import CRASH_LIMIT

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Admitted:
    message: AbstractIncomingMessage
    request: ClassifyRequest
    # Crashed a replica before: run it alone, so that no batch-mate is blamed with it.
    suspect: bool = False


class Admission:
    def __init__(
        self,
        replica_id: str,
        models: Collection[str],
        notices: Notices,
        acks: AckBook,
        metrics: ReplicaMetrics,
        publisher: Callable[[], Publisher | None],
    ) -> None:
        self._replica_id = replica_id
        self._models = models
        self._notices = notices
        self._acks = acks
        self._metrics = metrics
        self._publisher = publisher

    async def admit(self, message: AbstractIncomingMessage) -> Admitted | None:
        if not channel_open(message):
            # Its connection is gone, and with it the delivery: the broker requeued it.
            self._acks.settled(message)
            return None
        try:
            return await self._check(message)
        except Exception as exc:
            if not channel_open(message):
                self._acks.settled(message)
                log.warning("delivery %r lost with its channel: %r", message.message_id, exc)
                return None
            log.exception("dead-lettering request %r: it could not be handled", message.message_id)
            await self.dead_letter(message, f"the replica could not handle it: {exc!r}")
            return None

    async def _check(self, message: AbstractIncomingMessage) -> Admitted | None:
        if message.redelivered:
            self._metrics.redeliveries.inc()
        try:
            request = wire.parse_request(message)
        except MessageError as exc:
            log.warning("dead-lettering unreadable request %r: %s", message.message_id, exc)
            await self.dead_letter(message, f"unreadable request: {exc.message}")
            return None
        fields = job_fields(request.job_id, request.model)
        if self._notices.is_cancelled(request.job_id):
            log.info("skipping job %s: cancelled while queued", request.job_id, extra=fields)
            self._acks.settled(message)
            await message.ack()
            return None
        crashes = self._notices.crashes(request.job_id)
        if crashes >= CRASH_LIMIT:
            why = f"it crashed {crashes} replicas (each died or stalled running it)"
            log.error("dead-lettering job %s as poison: %s", request.job_id, why, extra=fields)
            await self._fail(
                message, request, JobFailure("dead_lettered", f"the job was dead-lettered: {why}")
            )
            await self.dead_letter(message, f"poison: {why}")
            return None
        if request.model not in self._models:
            error = UnknownModel(request.model, self._models)
            log.warning("dead-lettering job %s: %s", request.job_id, error.message, extra=fields)
            # Not in imgq_replica_jobs_total: its model label would be whatever a producer wrote.
            await self._fail(message, request, JobFailure(error.code, error.message))
            await self.dead_letter(message, f"{error.code}: {error.message}")
            return None
        return Admitted(message, request, suspect=crashes > 0)

    async def _fail(
        self, message: AbstractIncomingMessage, request: ClassifyRequest, failure: JobFailure
    ) -> None:
        """The job's failed event, confirmed, so the client reads the replica's own reason.
        Should it not go out, the dead letter still does, and the gateways fail the job from
        that."""
        event = JobEvent.for_request(request, JobStatus.FAILED).advance(
            JobStatus.FAILED, finished_at=time.time(), replica=self._replica_id, error=failure
        )
        try:
            publisher = self._connected()
            await publisher.confirmed(publisher.event(event, message))
        except Exception as exc:
            log.warning("job %s: failed event not published: %r", request.job_id, exc)

    async def dead_letter(self, message: AbstractIncomingMessage, reason: str) -> None:
        """Settle ``message`` as unprocessable; never raises."""
        self._acks.settled(message)
        self._metrics.dead_lettered.inc()
        try:
            await self._connected().dead_letter(message, reason)
            await message.ack()
            return
        except Exception as exc:
            log.warning(
                "dead letter of %r not published (%r); rejecting it", message.message_id, exc
            )
        try:
            await message.reject(requeue=False)
        except Exception as exc:  # its channel is gone: the broker delivers it again
            log.warning("reject of %r not sent: %r", message.message_id, exc)

    def _connected(self) -> Publisher:
        publisher = self._publisher()
        if publisher is None:
            raise ConnectionError("not connected to the broker")
        return publisher
