"""A classifier replica: a competing consumer of its models' work queues, one inference thread.

The pieces, each in its own module and testable alone with a stand-in channel:

- ``inbox``: deliveries in (the consumer callback) and the batches taken from them;
- ``admission``: the guard that reads and checks each delivery and settles what cannot run;
- ``runner``: one model's batch, from "started" through inference to the confirmed results
  and the acks (``acks``: as few ack frames as is safe; ``journal``: the jobs in hand, on disk);
- ``publisher``: everything sent, on the session's channel, with its confirms;
- ``notices``: cancellations and crash reports, from the stream every replica follows;
- ``vitals``: the health file and the heartbeats;
- ``broker_session``: one connection's setup, run again after every loss by
  ``shared.session.SessionLoop`` (any node of a cluster will do); the unit tests put an
  in-memory broker in its place (``tests/fakes.py``).

This module ties them together: the batch loop, and the process' life (start, drain on
SIGTERM, and an end with a clear log line when any background task dies, so that a supervisor
starts a fresh process instead of one that looks alive and does nothing).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from aio_pika.abc import AbstractIncomingMessage

from classifier_service.acks import AckBook
from classifier_service.admission import Admission, Admitted
from classifier_service.broker_session import ReplicaSession
from classifier_service.health import Progress
from classifier_service.inbox import Inbox, nack_quietly
from classifier_service.inference import classify_batch
from classifier_service.journal import Journal
from classifier_service.loaded import LoadedModel
from classifier_service.metrics import ReplicaMetrics
from classifier_service.notices import Notices
from classifier_service.publisher import Publisher
from classifier_service.runner import BatchRunner, Classify, Finished
from classifier_service.settings import ClassifierSettings
from classifier_service.vitals import State, Vitals
from shared.messages import AnnouncedModel
from shared.session import Supervised

log = logging.getLogger(__name__)

# Exit status of a replica that ended because one of its background tasks died.
DIED: int = 1


class Sessions(Protocol):
    """The replica's link to the broker: it hands deliveries to ``replica.inbox.deliver`` and
    the publisher of the moment to ``replica.attach``."""

    @property
    def consuming(self) -> bool: ...

    async def run(self) -> None:
        """Forever (until cancelled): connect, set up, consume, and again after a loss."""

    async def stop_consuming(self) -> None: ...


def broker_sessions(replica: Replica) -> Sessions:
    return ReplicaSession(
        replica.settings,
        tuple(replica.models),
        replica.inbox,
        replica.notices,
        replica.journal,
        replica.attach,
    )


class Replica:
    def __init__(
        self,
        settings: ClassifierSettings,
        models: dict[str, LoadedModel],
        metrics: ReplicaMetrics | None = None,
        *,
        classify: Classify = classify_batch,
        sessions: Callable[[Replica], Sessions] = broker_sessions,
    ) -> None:
        self.settings = settings
        self.models = models
        self.metrics = metrics if metrics is not None else ReplicaMetrics()
        # Deliveries not yet settled, so a batch can be acked with one frame when it can.
        self.acks = AckBook()
        self.progress = Progress(lambda: len(self.acks), settings.stall_timeout)
        self.inbox = Inbox(self.acks, self.progress)
        self.notices = Notices()
        self.journal = Journal(settings.journal_file)
        self.publisher: Publisher | None = None
        self.admission = Admission(
            settings.replica_id,
            models,
            self.notices,
            self.acks,
            self.metrics,
            lambda: self.publisher,
        )
        self.runner = BatchRunner(
            settings, self.metrics, self.acks, self.journal, classify, moved=self.progress.moved
        )
        self.vitals = Vitals(
            settings.replica_id,
            settings.heartbeat_interval,
            Path(settings.health_file),
            settings.restart_count,
            tuple(models),
            self._announced(),
            self.state,
            lambda: self.publisher,
        )
        self._stopping = asyncio.Event()
        self._died = asyncio.Event()
        # Set while the batch loop waits on an empty inbox with nothing left to send: what is
        # in flight then is only batches settling in the background (``runner.settled``).
        self._idle = asyncio.Event()
        self._busy = False
        self._tasks = Supervised(self._on_death)
        self.session = sessions(self)

    @property
    def jobs_done(self) -> int:
        return self.runner.jobs_done

    def attach(self, publisher: Publisher | None) -> None:
        """The publisher of the session now running; None between sessions."""
        self.publisher = publisher

    def state(self) -> State:
        ready = (
            self.publisher is not None and self.session.consuming and not self._stopping.is_set()
        )
        if self._stopping.is_set():
            doing = "stopping: draining the jobs in hand"
        elif self.publisher is None:
            doing = "not connected to the broker"
        elif not self.session.consuming:
            doing = "connected, not consuming yet"
        else:
            doing = "consuming"
        return State(
            jobs_done=self.runner.jobs_done,
            busy=self._busy,
            ready=ready,
            doing=doing,
            stalled_for=self.progress.stalled_for(),
            holding=len(self.acks),
        )

    def stop(self) -> None:
        log.info(
            "stop requested: no new jobs; draining for up to %.0f s", self.settings.drain_timeout
        )
        self._stopping.set()

    def _on_death(self, name: str, error: BaseException | None) -> None:
        self._died.set()

    async def warm_up(self) -> None:
        # A default version is in self.models twice (name and name@version): warm it once.
        await self.runner.warm_up(list({id(m): m for m in self.models.values()}.values()))

    async def run(self) -> int:
        """Serve until stopped (0) or until a background task dies (``DIED``)."""
        tasks = self._tasks
        batches = tasks.spawn(self._batch_loop(), "batches")
        tasks.spawn(self.vitals.write_health(), "health-file")
        beats = tasks.spawn(self.vitals.publish_heartbeats(), "heartbeats")
        tasks.spawn(self.session.run(), "broker-sessions")
        stopped = asyncio.create_task(self._stopping.wait())
        died = asyncio.create_task(self._died.wait())
        await asyncio.wait({stopped, died}, return_when=asyncio.FIRST_COMPLETED)
        for waiter in (stopped, died):
            waiter.cancel()
        await asyncio.gather(stopped, died, return_exceptions=True)
        if self._died.is_set():
            status = DIED
        else:
            status = 0
            await self.session.stop_consuming()
            await self._drain()
            for task in (batches, beats):
                task.cancel()
            await asyncio.gather(batches, beats, return_exceptions=True)
        # Back to the broker, while the session still holds the channel they came on.
        await self.runner.stop_settling()
        await self.inbox.give_back()
        stalled = self.progress.stalled_for() is not None
        await tasks.close()
        self.runner.shutdown()
        if not stalled:
            # Stopping by choice: what was in hand did not crash us.  Stalled, it may have.
            self.journal.release()
        self.journal.close()
        Path(self.settings.health_file).unlink(missing_ok=True)  # noqa: ASYNC240 (tiny, at exit)
        log.info("replica %s stopped after %d jobs", self.settings.replica_id, self.jobs_done)
        return status

    async def _drain(self) -> None:
        try:
            async with asyncio.timeout(self.settings.drain_timeout):
                await self._idle.wait()
                await self.runner.settled()
        except TimeoutError:
            log.warning("drain deadline passed with jobs in flight; the broker will requeue them")

    async def _batch_loop(self) -> None:
        """Take batches and run them one after another, each batch's results going out with
        the next batch's "started" when the next is already here (``runner.py``)."""
        settings = self.settings
        finished: Finished | None = None  # the last batch's results, not sent yet
        while True:
            if not len(self.inbox):
                if finished is not None:
                    # Nothing to run next: the results go out alone, now.
                    self.runner.send(finished, None)
                    finished = None
                self._idle.set()
            # With results in hand, only what is already here: they must not wait for more.
            wait = settings.batch_wait if finished is None else 0.0
            batch = await self.inbox.batch(settings.batch_size, wait)
            self._idle.clear()
            self._busy = True
            try:
                for jobs in await self._admit(batch):
                    finished = await self._run(jobs, finished)
            finally:
                self._busy = False
                self.progress.moved()

    async def _admit(self, batch: Sequence[AbstractIncomingMessage]) -> list[list[Admitted]]:
        """Admit each delivery; what is left to run, by model: a suspect (one that crashed a
        replica before) alone, the rest together."""
        runs: dict[str, list[Admitted]] = {}
        alone: list[Admitted] = []
        for message in batch:
            job = await self.admission.admit(message)
            if job is None:
                continue
            if job.suspect:
                alone.append(job)
            else:
                runs.setdefault(job.request.model, []).append(job)
        return [*runs.values(), *([job] for job in alone)]

    async def _run(self, jobs: list[Admitted], previous: Finished | None) -> Finished | None:
        """Start ``jobs``, sending ``previous``'s results with their "started", and run them;
        their results, to be sent with whatever runs next."""
        model_name = jobs[0].request.model
        publisher = self.publisher
        if publisher is None:
            self.runner.send(previous, None)
            await self._give_back(jobs, ConnectionError("not connected to the broker"))
            return None
        running = self.runner.begin(self.models[model_name], jobs, publisher)
        inference = self.runner.start(running)
        self.runner.send(previous, running)
        try:
            return await self.runner.infer(running, inference)
        except Exception as exc:
            running.trace.end(exc)
            await self._give_back(jobs, exc)
            return None

    async def _give_back(self, jobs: list[Admitted], error: BaseException) -> None:
        # A broker failure mid-batch: the confirms or acks did not happen, so the broker still
        # holds these jobs and will deliver them again.
        model_name = jobs[0].request.model
        log.error(
            "batch of %d %s jobs interrupted: %r",
            len(jobs),
            model_name,
            error,
            extra={"model": model_name},
        )
        for job in jobs:
            self.acks.settled(job.message)
            await nack_quietly(job.message)

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
