"""A classifier replica: competing consumer on the work queue, one inference thread.

Flow for each batch: parse -> send "started" (its confirm is not waited for) -> infer on
the inference thread (the event loop keeps serving broker heartbeats meanwhile) -> send
the final events -> wait for every confirm of the batch at once -> ack the batch (one
``multiple`` ack where that covers exactly the batch).  A job is acked only after its
result is safe on the broker, so a replica that dies at any point leaves the job to be
redelivered to another.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
)
from aio_pika.exceptions import ChannelInvalidStateError, ChannelNotFoundEntity

from classifier_service.acks import AckBook
from classifier_service.inference import classify_batch, configure_threads, warm_up
from classifier_service.loaded import LoadedModel
from classifier_service.metrics import ReplicaMetrics
from classifier_service.settings import ClassifierSettings
from shared import tracing, wire
from shared.connect import NodeRing, broker_user, safe_url, watch_channel
from shared.errors import ImgqError, JobTimedOut, MessageError, UnknownModel
from shared.logs import job_fields
from shared.messages import (
    AnnouncedModel,
    ClassifyRequest,
    JobEvent,
    JobFailure,
    Label,
    ReplicaHeartbeat,
)
from shared.states import JobStatus
from shared.topology import (
    CANCELLATIONS,
    Topology,
    declare_model_queue,
    declare_topology,
    find_topology,
)

log = logging.getLogger(__name__)

_RECONNECT_DELAYS = (0.2, 0.5, 1.0, 2.0)


class Replica:
    def __init__(
        self,
        settings: ClassifierSettings,
        models: dict[str, LoadedModel],
        metrics: ReplicaMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.models = models
        self.metrics = metrics if metrics is not None else ReplicaMetrics()
        self._inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        self._executor = self._new_executor()
        self._stopping = asyncio.Event()
        # Set while the batch loop waits on an empty inbox: nothing is in flight.
        self._idle = asyncio.Event()
        self._events: AbstractExchange | None = None
        self._replies: AbstractExchange | None = None
        self._busy = False
        # Deliveries not yet settled, so a batch can be acked with one frame when it can.
        self._acks = AckBook()
        # Any node of the cluster will do (IMGQ_BROKER_URLS).
        self._nodes = NodeRing(settings.broker_urls)
        # (queue, consumer tag) for each work queue we consume; empty while not consuming.
        self._consumers: list[tuple[AbstractQueue, str]] = []
        self._cancel_offset: int | None = None
        # The broker user we are connected as: every message we publish says so (user_id).
        self._user: str | None = None
        self.jobs_done = 0
        # Jobs cancelled while queued, so a replica that receives one skips it.  Bounded:
        # a cancellation only matters until the job reaches the head of the queue.
        self._cancelled: OrderedDict[str, None] = OrderedDict()

    def stop(self) -> None:
        log.info(
            "stop requested: no new jobs; draining for up to %.0f s", self.settings.drain_timeout
        )
        self._stopping.set()

    async def warm_up(self) -> None:
        loop = asyncio.get_running_loop()
        # A default version is in self.models twice (name and name@version): warm it once.
        for model in {id(m): m for m in self.models.values()}.values():
            await loop.run_in_executor(self._executor, warm_up, model, self.settings.batch_size)

    async def run(self) -> None:
        batches = asyncio.create_task(self._batch_loop(), name="batches")
        beats = asyncio.create_task(self._heartbeat_loop(), name="heartbeats")
        sessions = asyncio.create_task(self._sessions(), name="broker-sessions")
        await self._stopping.wait()
        await self._stop_consuming()
        await self._drain()
        for task in (batches, beats):
            task.cancel()
        await asyncio.gather(batches, beats, return_exceptions=True)
        await self._requeue_inbox()
        sessions.cancel()
        await asyncio.gather(sessions, return_exceptions=True)
        self._executor.shutdown(wait=False, cancel_futures=True)
        Path(self.settings.health_file).unlink(missing_ok=True)  # noqa: ASYNC240 (tiny, at exit)
        log.info("replica %s stopped after %d jobs", self.settings.replica_id, self.jobs_done)

    async def _sessions(self) -> None:
        """Connect to any live broker node; when the connection (or a channel, or a consumer)
        is lost, connect again, to another node if that one is gone.  Jobs in hand at that
        moment are requeued by the broker and come back; results are idempotent by job ID.
        Our own loop rather than aio-pika's robust connection, which only ever returns to the
        one URL it was given."""
        attempt = 0
        while not self._stopping.is_set():
            try:
                await self._session()
                attempt = 0
            except Exception as exc:  # any failure to connect or set up: try again
                log.warning("broker session ended: %r", exc)
            await asyncio.sleep(_RECONNECT_DELAYS[min(attempt, len(_RECONNECT_DELAYS) - 1)])
            attempt += 1

    async def _session(self) -> None:
        connection, url = await self._nodes.connect_any(connection_name=self.settings.replica_id)
        self._user = broker_user(url)
        lost = asyncio.Event()
        connection.close_callbacks.add(lambda *_: lost.set())
        try:
            channel, topology = await self._open_topology(connection, lost)
            # Every cancellation still in the stream's retention, then new ones as they come;
            # after a reconnect, from where the last session stopped reading.
            cancel_channel = await watch_channel(
                lost, await connection.channel(publisher_confirms=False)
            )
            await cancel_channel.set_qos(prefetch_count=1000)
            cancellations = await cancel_channel.get_queue(CANCELLATIONS)
            offset: int | str = "first" if self._cancel_offset is None else self._cancel_offset + 1
            await cancellations.consume(self._on_cancelled, arguments={"x-stream-offset": offset})
            # A deleted stream declared again numbers its entries from 0: start over then.
            (await cancel_channel.get_underlay_channel()).on_consumer_cancel_callbacks.add(
                self._cancellations_deleted
            )
            self._events = topology.events
            self._replies = topology.replies
            queues = [*(await self._model_queues(channel, topology)), topology.requests_queue]
            for queue in queues:
                self._consumers.append((queue, await queue.consume(self._on_message)))
            log.info(
                "replica %s consuming %s on %s: models %s, %d thread(s), batch %d",
                self.settings.replica_id,
                ", ".join(queue.name for queue in queues),
                safe_url(url),
                ",".join(self.models),
                self.settings.inference_threads,
                self.settings.batch_size,
            )
            await lost.wait()
        finally:
            self._consumers = []
            self._events = None
            self._replies = None
            # What this connection delivered and we have not settled is the broker's again.
            self._drop_inbox_of_closed_channels()
            if not connection.is_closed:
                with contextlib.suppress(Exception):
                    await connection.close()

    def _cancellations_deleted(self, *_: object) -> None:
        self._cancel_offset = None

    async def _model_queues(
        self, channel: AbstractChannel, topology: Topology
    ) -> list[AbstractQueue]:
        """The work queue of every model ID we serve (``name`` and ``name@version``): the
        broker routes each request to its model's queue, so we take only jobs we can do.
        Besides these we read the shared queue of unrouted requests (v1 producers).

        Declared even under least privilege (IMGQ_DECLARE_TOPOLOGY=false): which models a
        replica serves is its model repository's business, not the setup step's, so its broker
        user may declare model queues (compose/permissions.py).
        """
        bounds = self.settings.queue_bounds
        return [
            await declare_model_queue(channel, topology.router, bounds, model)
            for model in self.models
        ]

    async def _stop_consuming(self) -> None:
        consumers, self._consumers = self._consumers, []
        for queue, tag in consumers:
            with contextlib.suppress(Exception):
                await queue.cancel(tag)

    def _drop_inbox_of_closed_channels(self) -> None:
        kept: list[AbstractIncomingMessage] = []
        while not self._inbox.empty():
            message = self._inbox.get_nowait()
            if _channel_open(message):
                kept.append(message)
            else:
                self._acks.settled(message)
        for message in kept:
            self._inbox.put_nowait(message)

    async def _open_topology(
        self, connection: AbstractConnection, lost: asyncio.Event
    ) -> tuple[AbstractChannel, Topology]:
        while True:
            channel = await watch_channel(lost, await connection.channel(publisher_confirms=True))
            await channel.set_qos(prefetch_count=self.settings.prefetch)
            if self.settings.declare_topology:
                return channel, await declare_topology(channel, self.settings.queue_bounds)
            try:
                return channel, await find_topology(channel)
            except ChannelNotFoundEntity:
                # Least privilege: the setup step has not declared the topology yet.
                log.info("waiting for the broker topology (IMGQ_DECLARE_TOPOLOGY=false)")
                await asyncio.sleep(1)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        self._acks.delivered(message)
        await self._inbox.put(message)

    async def _on_cancelled(self, message: AbstractIncomingMessage) -> None:
        offset = (message.headers or {}).get("x-stream-offset")
        if isinstance(offset, int):
            self._cancel_offset = max(offset, self._cancel_offset or 0)
        if message.message_id:
            self._cancelled[message.message_id] = None
            while len(self._cancelled) > 100_000:
                self._cancelled.popitem(last=False)
        await message.ack()  # streams need acks: they are the consumer's credit

    async def _drain(self) -> None:
        try:
            await asyncio.wait_for(self._idle.wait(), self.settings.drain_timeout)
        except TimeoutError:
            log.warning("drain deadline passed with jobs in flight; the broker will requeue them")

    async def _requeue_inbox(self) -> None:
        while not self._inbox.empty():
            message = self._inbox.get_nowait()
            self._acks.settled(message)
            await _nack_quietly(message)

    async def _batch_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if self._inbox.empty():
                self._idle.set()
            batch = [await self._inbox.get()]
            self._idle.clear()
            deadline = loop.time() + self.settings.batch_wait
            while len(batch) < self.settings.batch_size:
                # Take what is already here first: on Python 3.11, wait_for with a timeout of
                # 0 never returns an item, so a zero batch wait would never batch at all.
                if not self._inbox.empty():
                    batch.append(self._inbox.get_nowait())
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._inbox.get(), remaining))
                except TimeoutError:
                    break
            self._busy = True
            try:
                await self._process(batch)
            finally:
                self._busy = False

    async def _process(self, batch: Sequence[AbstractIncomingMessage]) -> None:
        by_model: dict[str, list[tuple[AbstractIncomingMessage, ClassifyRequest]]] = {}
        for message in batch:
            if not _channel_open(message):
                # Its connection is gone, and with it the delivery: the broker requeued it.
                self._acks.settled(message)
                continue
            request = await self._accept(message)
            if request is not None:
                by_model.setdefault(request.model, []).append((message, request))
        for model_name, jobs in by_model.items():
            try:
                traced = [(request, wire.trace_headers(message)) for message, request in jobs]
                with tracing.BatchTrace(self.settings.replica_id, traced) as traces:
                    await self._run_jobs(self.models[model_name], jobs, traces)
            except Exception:
                # A broker failure mid-batch: the confirms or acks did not happen, so the
                # broker still holds these jobs and will deliver them again.
                log.exception(
                    "batch of %d %s jobs interrupted",
                    len(jobs),
                    model_name,
                    extra={"model": model_name},
                )
                for message, _ in jobs:
                    self._acks.settled(message)
                    await _nack_quietly(message)

    async def _accept(self, message: AbstractIncomingMessage) -> ClassifyRequest | None:
        """Parse and check one request; dead-letter what can never succeed."""
        if message.redelivered:
            self.metrics.redeliveries.inc()
        try:
            request = wire.parse_request(message)
        except MessageError as exc:
            log.warning("dead-lettering unreadable request %s: %s", message.message_id, exc)
            self.metrics.dead_lettered.inc()
            self._acks.settled(message)
            await message.reject(requeue=False)
            return None
        if request.job_id in self._cancelled:
            log.info(
                "skipping job %s: cancelled while queued",
                request.job_id,
                extra=job_fields(request.job_id, request.model),
            )
            self._acks.settled(message)
            await message.ack()
            return None
        if request.image_name == self.settings.debug_crash_image:
            log.error(
                "IMGQ_DEBUG_CRASH_IMAGE: crashing on job %s",
                request.job_id,
                extra=job_fields(request.job_id, request.model),
            )
            os._exit(70)
        if request.model not in self.models:
            error = UnknownModel(request.model, self.models)
            log.warning(
                "dead-lettering job %s: %s",
                request.job_id,
                error.message,
                extra=job_fields(request.job_id, request.model),
            )
            event = JobEvent.for_request(request, JobStatus.FAILED).advance(
                JobStatus.FAILED,
                finished_at=time.time(),
                replica=self.settings.replica_id,
                error=JobFailure(error.code, error.message),
            )
            await _confirmed(self._publish(event, message, request))
            # Not in imgq_jobs_total: its model label would be whatever a producer wrote.
            self.metrics.dead_lettered.inc()
            self._acks.settled(message)
            await message.reject(requeue=False)
            return None
        return request

    async def _run_jobs(
        self,
        model: LoadedModel,
        jobs: list[tuple[AbstractIncomingMessage, ClassifyRequest]],
        traces: tracing.BatchTrace,
    ) -> None:
        started_at = time.time()
        started = [
            JobEvent.for_request(request, JobStatus.STARTED).advance(
                JobStatus.STARTED, started_at=started_at, replica=self.settings.replica_id
            )
            for _, request in jobs
        ]
        # Sent now, confirmed whenever: inference does not wait for the broker.  The final
        # events go out on the same channel later, so the log still has them in order.
        confirms = [c for event in started for c in self._publish(event)]
        inference_started = time.perf_counter()
        outcomes: Sequence[tuple[Label, ...] | ImgqError]
        try:
            async with asyncio.timeout(self.settings.job_time_limit):
                outcomes = await asyncio.get_running_loop().run_in_executor(
                    self._executor,
                    classify_batch,
                    model,
                    [request.image for _, request in jobs],
                    self.settings.debug_delay,
                )
        except TimeoutError:
            outcomes = [self._abandon_inference(len(jobs))] * len(jobs)
        except BaseException:
            await asyncio.gather(*confirms, return_exceptions=True)  # settle them, then fail
            raise
        finished_at = time.time()
        traces.inference(started_at, finished_at, outcomes)
        model_name = jobs[0][1].model  # a batch is one model's jobs
        self.metrics.batch_done(model_name, len(jobs), time.perf_counter() - inference_started)
        finals = []
        for event, outcome in zip(started, outcomes, strict=True):
            if isinstance(outcome, ImgqError):
                finals.append(
                    event.advance(
                        JobStatus.FAILED,
                        finished_at=finished_at,
                        error=JobFailure(outcome.code, outcome.message),
                    )
                )
            else:
                finals.append(
                    event.advance(JobStatus.SUCCEEDED, finished_at=finished_at, result=outcome)
                )
        for final, (message, request) in zip(finals, jobs, strict=True):
            with traces.publishing(final):  # the final event carries this span's context
                confirms += self._publish(final, message, request)
        # One wait for the whole batch's confirms (started and final), then its acks.
        await _confirmed(confirms)
        await self._acks.ack_batch([message for message, _ in jobs])
        self.jobs_done += len(jobs)
        for final in finals:
            self.metrics.job_done(model_name, final.status.value)
            fields = job_fields(final.job_id, model_name)
            log.info("job %s %s", final.job_id, final.status.value, extra=fields)

    def _abandon_inference(self, jobs: int) -> JobTimedOut:
        """The inference thread is stuck past the time limit (a picture that takes minutes to
        decode, say).  A thread cannot be stopped: leave it to finish on its own and carry on
        with a fresh one, failing this batch's jobs clearly."""
        limit = self.settings.job_time_limit
        log.error("a batch of %d job(s) ran past %.0f s; its thread is abandoned", jobs, limit)
        stuck = self._executor
        self._executor = self._new_executor()
        stuck.shutdown(wait=False, cancel_futures=True)
        return JobTimedOut(f"decoding and classifying took longer than the {limit:g} s limit")

    def _new_executor(self) -> ThreadPoolExecutor:
        # One inference thread: the runtime parallelises inside it with its own pool, and a
        # second thread would only oversubscribe the cores.
        return ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix="inference",
            initializer=configure_threads,
            initargs=(self.settings.inference_threads,),
        )

    def _publish(
        self,
        event: JobEvent,
        message: AbstractIncomingMessage | None = None,
        request: ClassifyRequest | None = None,
    ) -> list[asyncio.Future[object]]:
        """Send ``event`` to the events exchange and, for a final event whose producer asked,
        to its ``reply_to`` queue.  Returns the confirms to wait for; the frames are written
        in call order, so events of one job reach the log in the order they were sent."""
        if self._events is None or self._replies is None:
            raise ConnectionError("not connected to the broker")
        out = wire.event_message(event, user_id=self._user)
        # mandatory=False: no gateway may be listening right now, which is not an error.
        sends: list[asyncio.Future[object]] = [
            asyncio.ensure_future(
                self._events.publish(out.message, out.routing_key, mandatory=False)
            )
        ]
        if message is not None and request is not None and message.reply_to:
            if not wire.reply_allowed(message.reply_to):
                log.warning(
                    "job %s: not replying to %r (only server-named or direct reply-to queues)",
                    event.job_id,
                    message.reply_to,
                )
                return sends
            reply = wire.reply_message(event, message, request.version, user_id=self._user)
            sends.append(
                asyncio.ensure_future(
                    self._replies.publish(reply.message, reply.routing_key, mandatory=False)
                )
            )
        return sends

    def _announced(self) -> dict[str, AnnouncedModel]:
        """Each model version served, by ``name@version`` (``self.models`` also holds each
        default version under its bare name: the same object, announced once)."""
        return {
            model.id: AnnouncedModel(
                title=model.spec.title,
                input_size=model.spec.input_size,
                name=model.spec.name,
                version=model.version,
                default=self.models.get(model.spec.name) is model,
                classes=len(model.labels),
                precision=model.precision.value,
            )
            for model in self.models.values()
        }

    async def _heartbeat_loop(self) -> None:
        health = Path(self.settings.health_file)
        while True:
            beat = ReplicaHeartbeat(
                replica=self.settings.replica_id,
                models=tuple(self.models),
                jobs_done=self.jobs_done,
                busy=self._busy,
                interval=self.settings.heartbeat_interval,
                at=time.time(),
                model_info=self._announced(),
                restarts=self.settings.restart_count,
            )
            out = wire.heartbeat_message(beat, user_id=self._user)
            try:
                if self._events is None or not self._consumers:
                    raise ConnectionError("not connected to the broker, or not consuming")
                await self._events.publish(out.message, out.routing_key, mandatory=False)
                # Only a replica that reaches the broker and is consuming reports itself
                # healthy: the health check reads this file's age.
                health.touch()  # noqa: ASYNC240 (one tiny metadata write every few seconds)
            except Exception as exc:
                log.warning("heartbeat not published: %r", exc)
            await asyncio.sleep(self.settings.heartbeat_interval)


def _channel_open(message: AbstractIncomingMessage) -> bool:
    try:
        message.channel  # noqa: B018 (raises once the delivery's channel is closed)
    except ChannelInvalidStateError:
        return False
    return True


async def _confirmed(confirms: Sequence[asyncio.Future[object]]) -> None:
    """Wait for every confirm; then raise the first failure, if any (none left unread)."""
    outcomes = await asyncio.gather(*confirms, return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome


async def _nack_quietly(message: AbstractIncomingMessage) -> None:
    try:
        await message.nack(requeue=True)
    except Exception as exc:  # the channel is gone; the broker requeues on its own
        log.debug("nack of %s not sent: %r", message.message_id, exc)
