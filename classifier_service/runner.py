"""One model's batch through the replica, in stages that overlap from one batch to the next.

- ``begin``: the batch's "started" events (and its jobs' spans);
- ``start`` and ``infer``: the jobs journalled, decoded and classified on the inference thread
  within the time limit (the event loop keeps serving broker heartbeats meanwhile), the
  journal cleared, the final events built;
- ``send`` (while the inference thread runs the next batch): each final event's reply to its
  producer, then one message (``job.events``) with a finished batch's final events and the
  next batch's "started", when one is ready to run (else either alone); and the finished
  batch's ``settle`` set going in the background:
- ``settle``: every confirm of the batch (its "started" and its results) awaited at once, then
  the batch acked (one ``multiple`` ack where that covers exactly the batch).

So the inference thread never waits for the broker: while one batch's results are confirmed
and acked, the next batch is already running, and a batch's results and the next batch's
"started" cost the broker, and every gateway reading the log, one message.  A job is still
acked only after its result is safe on the broker, so a replica that dies at any point leaves
the job to be redelivered to another; the journal names only the jobs being inferred, the
ones whose decoding could have killed the process.

Inference itself is a function passed in (``classify_batch`` in service), so the unit tests
run this with a stand-in and no model.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from classifier_service.acks import AckBook
from classifier_service.admission import Admitted
from classifier_service.inbox import nack_quietly
from classifier_service.inference import classify_batch, configure_threads, warm_up
from classifier_service.journal import Journal
from classifier_service.loaded import LoadedModel
from classifier_service.metrics import ReplicaMetrics
from classifier_service.publisher import Confirm, Publisher
from classifier_service.settings import ClassifierSettings
from shared import tracing, wire
from shared.errors import ImgqError, JobTimedOut
from shared.logs import job_fields
from shared.messages import EventBatch, JobEvent, JobFailure, Label
from shared.states import JobStatus

log = logging.getLogger(__name__)

Outcome = tuple[Label, ...] | ImgqError
# classify_batch's shape: (model, images, seconds of debug delay) -> one outcome per image.
Classify = Callable[[LoadedModel, Sequence[bytes], float], Sequence[Outcome]]


@dataclass(eq=False)
class Running:
    """A batch begun: one model's jobs, on the session (publisher) they were delivered on."""

    model: LoadedModel
    jobs: Sequence[Admitted]
    publisher: Publisher
    started: list[JobEvent]
    trace: tracing.BatchTrace
    # The confirms of the message(s) its "started" events went out in.
    confirms: list[Confirm] = field(default_factory=list)
    # When its inference was handed to the inference thread (time.perf_counter()).
    inference_started: float = 0.0


@dataclass(eq=False)
class Finished:
    """A batch whose inference is over: its final events, not sent yet."""

    running: Running
    finals: list[JobEvent]


class BatchRunner:
    def __init__(
        self,
        settings: ClassifierSettings,
        metrics: ReplicaMetrics,
        acks: AckBook,
        journal: Journal,
        classify: Classify = classify_batch,
        *,
        moved: Callable[[], None] = lambda: None,
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._acks = acks
        self._journal = journal
        self._classify = classify
        # Told whenever a batch is settled: progress, for the stall clock.
        self._moved = moved
        self._executor = self._new_executor()
        # Batches whose confirms and acks are being waited for while the next one runs.
        self._settling: set[asyncio.Task[None]] = set()
        self.jobs_done = 0

    async def warm_up(self, models: Sequence[LoadedModel]) -> None:
        loop = asyncio.get_running_loop()
        for model in models:
            await loop.run_in_executor(self._executor, warm_up, model, self._settings.batch_size)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    @property
    def settling(self) -> int:
        """Batches sent and not yet acked (or given back)."""
        return len(self._settling)

    async def settled(self) -> None:
        """Until every batch sent is acked or given back (a drain)."""
        while self._settling:
            await asyncio.gather(*self._settling, return_exceptions=True)

    async def stop_settling(self) -> None:
        """Stop waiting for confirms (the process ends): the broker gets those jobs back."""
        for task in self._settling:
            task.cancel()
        await asyncio.gather(*self._settling, return_exceptions=True)

    # -- the stages ------------------------------------------------------------------------

    def begin(self, model: LoadedModel, jobs: Sequence[Admitted], publisher: Publisher) -> Running:
        """The batch's "started" events, to go out with the last batch's results (``send``)."""
        replica = self._settings.replica_id
        started_at = time.time()
        traced = [(job.request, wire.trace_headers(job.message)) for job in jobs]
        started = [
            JobEvent.for_request(job.request, JobStatus.STARTED).advance(
                JobStatus.STARTED,
                started_at=started_at,
                replica=replica,
                model_version=model.version,
            )
            for job in jobs
        ]
        return Running(model, jobs, publisher, started, tracing.BatchTrace(replica, traced))

    def start(self, running: Running) -> asyncio.Future[Sequence[Outcome]]:
        """Journal the batch and hand it to the inference thread, which starts at once: what
        the event loop sends meanwhile (``send``) does not hold it up."""
        jobs = running.jobs
        self._journal.hold([job.request.job_id for job in jobs])
        self._crash_if_asked(jobs)
        running.inference_started = time.perf_counter()
        return asyncio.get_running_loop().run_in_executor(
            self._executor,
            self._classify,
            running.model,
            [job.request.image for job in jobs],
            self._settings.debug_delay,
        )

    async def infer(
        self, running: Running, inference: asyncio.Future[Sequence[Outcome]]
    ) -> Finished:
        """Decode and classify the batch (``start``): its final events, to be sent later."""
        jobs = running.jobs
        try:
            outcomes = await self._outcomes(inference, len(jobs))
        except asyncio.CancelledError:
            # The replica is stopping, or dying: it decides what its journal keeps.
            raise
        except BaseException:
            self._journal.release()
            raise
        self._journal.release()
        finished_at = time.time()
        started_at = running.started[0].started_at or finished_at
        running.trace.inference(started_at, finished_at, outcomes)
        model_name = jobs[0].request.model  # a batch is one model's jobs
        seconds = time.perf_counter() - running.inference_started
        self._metrics.batch_done(model_name, len(jobs), seconds)
        finals = [
            event.advance(
                JobStatus.FAILED,
                finished_at=finished_at,
                error=JobFailure(outcome.code, outcome.message),
            )
            if isinstance(outcome, ImgqError)
            else event.advance(JobStatus.SUCCEEDED, finished_at=finished_at, result=outcome)
            for event, outcome in zip(running.started, outcomes, strict=True)
        ]
        return Finished(running, finals)

    def send(self, finished: Finished | None, running: Running | None) -> None:
        """Publish ``finished``'s results and ``running``'s "started" events, in one message
        where both are on the same session, and settle ``finished`` in the background."""
        if (
            finished is not None
            and running is not None
            and finished.running.publisher is not running.publisher
        ):
            # A new session since: each on its own (the old one's publish fails, and its jobs
            # go back to the queue, which already has them).
            self.send(finished, None)
            self.send(None, running)
            return
        first = finished.running if finished is not None else running
        if first is None:
            return
        publisher = first.publisher
        alone: list[Confirm] = []  # replies, and events sent on their own
        if finished is not None:
            # Replies first: a producer waits on its reply, nobody on the log's order.
            for final, job in zip(finished.finals, finished.running.jobs, strict=True):
                alone += publisher.reply(final, job.message)
        events: list[JobEvent] = []
        traces: list[dict[str, str]] = []
        if finished is not None:
            for final in finished.finals:
                # The final event carries the context of the span that publishes it.
                with finished.running.trace.publishing(final):
                    if final.callback is not None:
                        # Alone, marked for the webhooks exchange (which routes on a
                        # message's headers, so it cannot take one event out of a batch).
                        alone += publisher.event(final)
                        continue
                    traces.append(tracing.outgoing_headers())
                events.append(final)
        if running is not None:
            events += running.started
            traces += [{}] * len(running.started)
        sent = [publisher.events(EventBatch(tuple(events), tuple(traces)))] if events else []
        if running is not None:
            running.confirms += sent
        if finished is not None:
            confirms = [*finished.running.confirms, *sent, *alone]
            task = asyncio.create_task(self._settle(finished, confirms))
            self._settling.add(task)
            task.add_done_callback(self._settling.discard)

    async def _settle(self, finished: Finished, confirms: list[Confirm]) -> None:
        """Wait for the batch's confirms, then ack it; should the broker fail meanwhile, give
        the jobs back (it still holds them, and delivers them again).  Never raises."""
        running = finished.running
        jobs = running.jobs
        error: BaseException | None = None
        try:
            await running.publisher.confirmed(confirms)
            await self._acks.ack_batch([job.message for job in jobs])
        except Exception as exc:
            error = exc
            model = jobs[0].request.model
            log.exception(
                "batch of %d %s jobs interrupted", len(jobs), model, extra={"model": model}
            )
            for job in jobs:
                self._acks.settled(job.message)
                await nack_quietly(job.message)
            return
        except asyncio.CancelledError as exc:  # stopping: the broker gets them back
            error = exc
            raise
        finally:
            running.trace.end(error)
            self._moved()
        self.jobs_done += len(jobs)
        for final in finished.finals:
            self._metrics.job_done(final.model, final.status.value)
            fields = job_fields(final.job_id, final.model)
            log.info("job %s %s", final.job_id, final.status.value, extra=fields)

    # -- inference -------------------------------------------------------------------------

    async def _outcomes(
        self, inference: asyncio.Future[Sequence[Outcome]], jobs: int
    ) -> Sequence[Outcome]:
        try:
            async with asyncio.timeout(self._settings.job_time_limit):
                return await inference
        except TimeoutError:
            return [self._abandon_inference(jobs)] * jobs

    def _abandon_inference(self, jobs: int) -> JobTimedOut:
        """The inference thread is stuck past the time limit (a picture that takes minutes to
        decode, say).  A thread cannot be stopped: leave it to finish on its own and carry on
        with a fresh one, failing this batch's jobs clearly."""
        limit = self._settings.job_time_limit
        log.error("a batch of %d job(s) ran past %g s; its thread is abandoned", jobs, limit)
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
            initargs=(self._settings.inference_threads,),
        )

    def _crash_if_asked(self, jobs: Sequence[Admitted]) -> None:
        """Test hook (IMGQ_DEBUG_CRASH_IMAGE): die as a segfault in the decoder would, with
        the batch journalled."""
        crash = self._settings.debug_crash_image
        for job in jobs:
            if crash is not None and job.request.image_name == crash:
                fields = job_fields(job.request.job_id, job.request.model)
                log.error(
                    "IMGQ_DEBUG_CRASH_IMAGE: crashing on job %s", job.request.job_id, extra=fields
                )
                os._exit(70)
