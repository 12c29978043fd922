"""A replica's signs of life: its health file, for its supervisor, and its heartbeats, for the
gateways (``/status``, the status page, which models are online).

Two loops, each every heartbeat interval.  The health file is written whatever the broker
does (liveness must never depend on it); a heartbeat is published only while connected, and
never waited on for longer than an interval, so a broker that does not answer delays neither.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from classifier_service import health
from classifier_service.publisher import Publisher
from shared.messages import AnnouncedModel, ReplicaHeartbeat

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class State:
    """What the replica says about itself at one moment."""

    jobs_done: int
    busy: bool
    # Connected to the broker and consuming, and not stopping.
    ready: bool
    # What it is doing, or what keeps it from being ready.
    doing: str
    # Seconds without progress while holding work, once past IMGQ_STALL_TIMEOUT; else None.
    stalled_for: float | None
    holding: int


class Vitals:
    def __init__(
        self,
        replica_id: str,
        interval: float,
        health_file: Path,
        restarts: int,
        models: Sequence[str],
        announced: Mapping[str, AnnouncedModel],
        state: Callable[[], State],
        publisher: Callable[[], Publisher | None],
    ) -> None:
        self._replica_id = replica_id
        self._interval = interval
        self._health_file = health_file
        self._restarts = restarts
        self._models = tuple(models)
        self._announced = dict(announced)
        self._state = state
        self._publisher = publisher
        self._was_stalled = False

    def health(self) -> health.Health:
        state = self._state()
        stalled = state.stalled_for is not None
        if stalled != self._was_stalled:
            self._was_stalled = stalled
            if state.stalled_for is not None:
                log.error(
                    "stalled: holding %d deliveries, no progress for %.0f s",
                    state.holding,
                    state.stalled_for,
                )
            else:
                log.warning("moving again after a stall")
        reason = (
            f"holding {state.holding} deliveries, no progress for {state.stalled_for:.0f} s"
            if state.stalled_for is not None
            else state.doing
        )
        return health.Health(
            at=time.time(),
            interval=self._interval,
            ready=state.ready,
            stalled=stalled,
            reason=reason,
            replica=self._replica_id,
            pid=os.getpid(),
        )

    def heartbeat(self) -> ReplicaHeartbeat:
        state = self._state()
        return ReplicaHeartbeat(
            replica=self._replica_id,
            models=self._models,
            jobs_done=state.jobs_done,
            busy=state.busy,
            interval=self._interval,
            at=time.time(),
            model_info=self._announced,
            restarts=self._restarts,
            stalled=state.stalled_for is not None,
        )

    async def write_health(self) -> None:
        """Forever: the health file, every interval."""
        while True:
            try:
                health.write(self._health_file, self.health())
            except OSError as exc:  # a full disk, say: liveness will say so
                log.warning("health file %s not written: %s", self._health_file, exc)
            await asyncio.sleep(self._interval)

    async def publish_heartbeats(self) -> None:
        """Forever: a heartbeat every interval, while ready (a replica that is not consuming
        is no help to the gateways, which count it online while its heartbeats come)."""
        while True:
            publisher = self._publisher()
            if publisher is not None and self._state().ready:
                try:
                    await asyncio.wait_for(publisher.heartbeat(self.heartbeat()), self._interval)
                except Exception as exc:
                    log.warning("heartbeat not published: %r", exc)
            await asyncio.sleep(self._interval)
