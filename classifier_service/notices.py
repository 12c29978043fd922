"""What replicas learn from the cancellations stream: jobs cancelled while queued, and jobs
that crashed a replica (``shared/topology.py``: ``CANCELLATIONS``, ``CRASH_LIMIT``).

Every replica replays the stream when it starts and follows it; after a reconnect it resumes
after the last entry it read.  Each entry is handled inside its own guard: whatever is wrong
with one is logged and the entry passed over (a stream keeps its entries; there is nothing to
dead-letter), and the consumer goes on.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from typing import Final, TypeVar

from aio_pika.abc import AbstractIncomingMessage

from shared import wire
from shared.messages import is_job_id
from shared.topology import CRASHED_ROUTING_KEY

log = logging.getLogger(__name__)

# Jobs remembered, each kind, the oldest forgotten first: an entry matters only until its job
# leaves the queue, and the stream itself keeps a day.
MAX_JOBS: Final = 100_000

_V = TypeVar("_V")


class Notices:
    def __init__(self, max_jobs: int = MAX_JOBS) -> None:
        self._max = max_jobs
        self._cancelled: OrderedDict[str, None] = OrderedDict()
        # Per job, the lives (processes) that died running it: a report sent twice counts once.
        self._crashes: OrderedDict[str, set[str]] = OrderedDict()
        # The last stream offset read, to resume after it; None: from the start.
        self.offset: int | None = None
        # Crash reports waited for (by life), to know that the stream was read up to them.
        self._awaited: dict[str, asyncio.Event] = {}

    def start_offset(self) -> int | str:
        return "first" if self.offset is None else self.offset + 1

    def restart(self, *_: object) -> None:
        """The stream was deleted (and will be declared again, numbered from 0): read it all."""
        self.offset = None

    def is_cancelled(self, job_id: str) -> bool:
        return job_id in self._cancelled

    def crashes(self, job_id: str) -> int:
        return len(self._crashes.get(job_id, ()))

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        try:
            self._read(message)
        except Exception:
            log.exception("cancellations stream: entry %r passed over", message.message_id)
        try:
            await message.ack()  # a stream needs acks: they are the consumer's credit
        except Exception as exc:  # its channel is gone; the next session resumes from offset
            log.debug("stream ack not sent: %r", exc)

    def _read(self, message: AbstractIncomingMessage) -> None:
        offset = (message.headers or {}).get("x-stream-offset")
        if isinstance(offset, int) and not isinstance(offset, bool):
            self.offset = max(offset, self.offset or 0)
        if message.routing_key == CRASHED_ROUTING_KEY:
            report = wire.parse_crash_report(message)
            for job_id in report.jobs:
                lives = self._crashes.setdefault(job_id, set())
                lives.add(report.life)
                self._crashes.move_to_end(job_id)
            _trim(self._crashes, self._max)
            awaited = self._awaited.get(report.life)
            if awaited is not None:
                awaited.set()
        elif is_job_id(message.message_id):
            # A cancellation (job.cancelled): a job event, of which only the job ID matters.
            assert message.message_id is not None
            self._cancelled[message.message_id] = None
            _trim(self._cancelled, self._max)

    def expect(self, life: str) -> asyncio.Event:
        """Set once the crash report of ``life`` is read back from the stream, and so
        everything before it.  Ask before publishing the report, so as not to miss it."""
        return self._awaited.setdefault(life, asyncio.Event())

    def forget(self, life: str) -> None:
        self._awaited.pop(life, None)


def _trim(jobs: OrderedDict[str, _V], most: int) -> None:
    while len(jobs) > most:
        jobs.popitem(last=False)
