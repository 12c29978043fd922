"""Run one model's batch: "started" out, inference on the inference thread, results out, acks.

Flow: send "started" (its confirm is not waited for) -> journal the jobs -> decode and
classify on the inference thread, within the time limit (the event loop keeps serving broker
heartbeats meanwhile) -> send the final events -> wait for every confirm of the batch at once
-> ack the batch (one ``multiple`` ack where that covers exactly the batch) -> clear the
journal.  A job is acked only after its result is safe on the broker, so a replica that dies at
any point leaves the job to be redelivered to another.

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

from classifier_service.acks import AckBook
from classifier_service.admission import Admitted
from classifier_service.inference import classify_batch, configure_threads, warm_up
from classifier_service.journal import Journal
from classifier_service.loaded import LoadedModel
from classifier_service.metrics import ReplicaMetrics
from classifier_service.publisher import Confirm, Publisher
from classifier_service.settings import ClassifierSettings
from shared import tracing, wire
from shared.errors import ImgqError, JobTimedOut
from shared.logs import job_fields
from shared.messages import JobEvent, JobFailure, Label
from shared.states import JobStatus

log = logging.getLogger(__name__)

Outcome = tuple[Label, ...] | ImgqError
# classify_batch's shape: (model, images, seconds of debug delay) -> one outcome per image.
Classify = Callable[[LoadedModel, Sequence[bytes], float], Sequence[Outcome]]


class BatchRunner:
    def __init__(
        self,
        settings: ClassifierSettings,
        metrics: ReplicaMetrics,
        acks: AckBook,
        journal: Journal,
        classify: Classify = classify_batch,
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._acks = acks
        self._journal = journal
        self._classify = classify
        self._executor = self._new_executor()
        self.jobs_done = 0

    async def warm_up(self, models: Sequence[LoadedModel]) -> None:
        loop = asyncio.get_running_loop()
        for model in models:
            await loop.run_in_executor(self._executor, warm_up, model, self._settings.batch_size)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def run(self, model: LoadedModel, jobs: Sequence[Admitted], publisher: Publisher) -> None:
        """Run ``jobs`` (one model's) and settle them; raises when the broker failed midway
        (the caller gives them back: the broker still holds them)."""
        traced = [(job.request, wire.trace_headers(job.message)) for job in jobs]
        with tracing.BatchTrace(self._settings.replica_id, traced) as traces:
            stopping = False
            try:
                await self._run(model, jobs, publisher, traces)
            except asyncio.CancelledError:
                # The replica is stopping, or dying: it decides what its journal keeps.
                stopping = True
                raise
            finally:
                if not stopping:
                    self._journal.release()

    async def _run(
        self,
        model: LoadedModel,
        jobs: Sequence[Admitted],
        publisher: Publisher,
        traces: tracing.BatchTrace,
    ) -> None:
        replica = self._settings.replica_id
        started_at = time.time()
        started = [
            JobEvent.for_request(job.request, JobStatus.STARTED).advance(
                JobStatus.STARTED,
                started_at=started_at,
                replica=replica,
                model_version=model.version,
            )
            for job in jobs
        ]
        # Sent now, confirmed whenever: inference does not wait for the broker.  The final
        # events go out on the same channel later, so the log still has them in order.
        confirms = [c for event in started for c in publisher.event(event)]
        self._journal.hold([job.request.job_id for job in jobs])
        self._crash_if_asked(jobs)
        inference_started = time.perf_counter()
        try:
            outcomes = await self._infer(model, [job.request.image for job in jobs])
        except BaseException:
            await asyncio.gather(*confirms, return_exceptions=True)  # settle them, then fail
            raise
        finished_at = time.time()
        traces.inference(started_at, finished_at, outcomes)
        model_name = jobs[0].request.model  # a batch is one model's jobs
        self._metrics.batch_done(model_name, len(jobs), time.perf_counter() - inference_started)
        finals = [
            event.advance(
                JobStatus.FAILED,
                finished_at=finished_at,
                error=JobFailure(outcome.code, outcome.message),
            )
            if isinstance(outcome, ImgqError)
            else event.advance(JobStatus.SUCCEEDED, finished_at=finished_at, result=outcome)
            for event, outcome in zip(started, outcomes, strict=True)
        ]
        for final, job in zip(finals, jobs, strict=True):
            with traces.publishing(final):  # the final event carries this span's context
                confirms += publisher.event(final, job.message, job.request)
        await self._settle(jobs, finals, publisher, confirms)

    async def _settle(
        self,
        jobs: Sequence[Admitted],
        finals: Sequence[JobEvent],
        publisher: Publisher,
        confirms: list[Confirm],
    ) -> None:
        """One wait for the whole batch's confirms (started and final), then its acks."""
        await publisher.confirmed(confirms)
        await self._acks.ack_batch([job.message for job in jobs])
        self.jobs_done += len(jobs)
        for final in finals:
            self._metrics.job_done(final.model, final.status.value)
            fields = job_fields(final.job_id, final.model)
            log.info("job %s %s", final.job_id, final.status.value, extra=fields)

    async def _infer(self, model: LoadedModel, images: list[bytes]) -> Sequence[Outcome]:
        try:
            async with asyncio.timeout(self._settings.job_time_limit):
                return await asyncio.get_running_loop().run_in_executor(
                    self._executor, self._classify, model, images, self._settings.debug_delay
                )
        except TimeoutError:
            return [self._abandon_inference(len(images))] * len(images)

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
