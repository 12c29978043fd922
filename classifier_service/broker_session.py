"""One broker connection's life for a replica, run again after each loss by ``SessionLoop``.

Set up in this order: the topology and the publishing channel; the cancellations stream (from
where the last session stopped reading); the report of the jobs a previous process died running,
if its journal holds any, read back from the stream before any work is taken, so this replica
already counts that crash; then the work queues of the models it serves.  Ready from then on,
until the connection, a channel or a consumer is lost; what it delivered and was not settled is
the broker's again, and comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Final

from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractQueue
from aio_pika.exceptions import ChannelNotFoundEntity

from classifier_service.inbox import Inbox
from classifier_service.journal import Journal
from classifier_service.notices import Notices
from classifier_service.publisher import Publisher
from classifier_service.settings import ClassifierSettings
from shared.connect import broker_user, safe_url, watch_channel
from shared.messages import CrashReport
from shared.session import SessionLoop
from shared.topology import (
    CANCELLATIONS,
    Topology,
    declare_model_queue,
    declare_topology,
    find_topology,
)

log = logging.getLogger(__name__)

# How long a replica back from a crash waits to read its own crash report back from the stream
# before it takes work anyway (the binding that routes reports there may be missing where an
# older setup step declared the topology).
READ_BACK_TIMEOUT: Final = 5.0
# Cancellations and crash reports are small: read them in large strides.
_STREAM_PREFETCH: Final = 1000


class ReplicaSession:
    def __init__(
        self,
        settings: ClassifierSettings,
        models: Sequence[str],
        inbox: Inbox,
        notices: Notices,
        journal: Journal,
        attach: Callable[[Publisher | None], None],
    ) -> None:
        self._settings = settings
        self._models = models
        self._inbox = inbox
        self._notices = notices
        self._journal = journal
        # Tells the replica which publisher to use now (None between sessions).
        self._attach = attach
        # (queue, consumer tag) for each work queue consumed; empty while not consuming.
        self._consumers: list[tuple[AbstractQueue, str]] = []

    @property
    def consuming(self) -> bool:
        return bool(self._consumers)

    async def run(self) -> None:
        """Sessions one after another, on any live node, until cancelled."""
        settings = self._settings
        await SessionLoop(settings.broker_urls, settings.replica_id, self).run()

    async def __call__(self, connection: AbstractConnection, url: str, lost: asyncio.Event) -> None:
        try:
            channel, topology = await self._open_topology(connection, lost)
            publisher = Publisher(
                topology.events,
                topology.replies,
                topology.dead_letters,
                broker_user(url),
                lost,
            )
            await self._follow_notices(connection, lost)
            await self._report_crash(publisher)
            self._attach(publisher)
            queues = [
                *[await self._model_queue(channel, topology, model) for model in self._models],
                topology.requests_queue,
            ]
            for queue in queues:
                self._consumers.append((queue, await queue.consume(self._inbox.deliver)))
            settings = self._settings
            log.info(
                "replica %s consuming %s on %s: models %s, %d thread(s), batch %d",
                settings.replica_id,
                ", ".join(queue.name for queue in queues),
                safe_url(url),
                ",".join(self._models),
                settings.inference_threads,
                settings.batch_size,
            )
            await lost.wait()
        finally:
            self._consumers = []
            self._attach(None)
            # What this connection delivered and we have not settled is the broker's again.
            self._inbox.drop_closed()

    async def stop_consuming(self) -> None:
        """No new deliveries (a drain): what is in hand is still finished and acked."""
        consumers, self._consumers = self._consumers, []
        for queue, tag in consumers:
            with contextlib.suppress(Exception):
                await queue.cancel(tag)

    async def _open_topology(
        self, connection: AbstractConnection, lost: asyncio.Event
    ) -> tuple[AbstractChannel, Topology]:
        while True:
            channel = await watch_channel(lost, await connection.channel(publisher_confirms=True))
            await channel.set_qos(prefetch_count=self._settings.prefetch)
            if self._settings.declare_topology:
                return channel, await declare_topology(channel, self._settings.queue_bounds)
            try:
                return channel, await find_topology(channel)
            except ChannelNotFoundEntity:
                # Least privilege: the setup step has not declared the topology yet.
                log.info("waiting for the broker topology (IMGQ_DECLARE_TOPOLOGY=false)")
                await asyncio.sleep(1)

    async def _model_queue(
        self, channel: AbstractChannel, topology: Topology, model: str
    ) -> AbstractQueue:
        """The work queue of a model ID we serve (``name`` and ``name@version``): the broker
        routes each request to its model's queue, so we take only jobs we can do.  Besides
        these we read the shared queue of unrouted requests (models with no queue of their own).

        Declared even under least privilege (IMGQ_DECLARE_TOPOLOGY=false): which models a
        replica serves is its model repository's business, not the setup step's, so its broker
        user may declare model queues (compose/permissions.py).
        """
        return await declare_model_queue(
            channel, topology.router, self._settings.queue_bounds, model
        )

    async def _follow_notices(self, connection: AbstractConnection, lost: asyncio.Event) -> None:
        """Every cancellation and crash report still in the stream's retention, then new ones
        as they come; after a reconnect, from where the last session stopped reading."""
        channel = await watch_channel(lost, await connection.channel(publisher_confirms=False))
        await channel.set_qos(prefetch_count=_STREAM_PREFETCH)
        stream = await channel.get_queue(CANCELLATIONS)
        offset = self._notices.start_offset()
        await stream.consume(self._notices.on_message, arguments={"x-stream-offset": offset})
        # A deleted stream declared again numbers its entries from 0: start over then.
        underlay = await channel.get_underlay_channel()
        underlay.on_consumer_cancel_callbacks.add(self._notices.restart)

    async def _report_crash(self, publisher: Publisher) -> None:
        """If the previous process here died running jobs, say so, once, before taking any."""
        leftover = self._journal.leftover
        if leftover is None:
            return
        report = CrashReport(self._settings.replica_id, leftover.life, leftover.jobs, time.time())
        read_back = self._notices.expect(leftover.life)
        try:
            await publisher.crash_report(report)
            self._journal.reported()
            log.warning(
                "this replica died running %d job(s) (%s): reported, so that one that keeps "
                "crashing replicas is stopped",
                len(leftover.jobs),
                ", ".join(leftover.jobs),
            )
            await asyncio.wait_for(read_back.wait(), READ_BACK_TIMEOUT)
        except TimeoutError:
            log.warning(
                "crash report not read back from %s within %.0f s", CANCELLATIONS, READ_BACK_TIMEOUT
            )
        finally:
            self._notices.forget(leftover.life)
