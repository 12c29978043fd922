"""One broker session loop for every service, and the background tasks that must not die quietly.

A *session* is one connection's life: connect to any live node (``shared.connect``), set up
channels, consumers and topology on it, run until the connection, a channel or a consumer is
lost, then start over, on another node if that one is gone.  Both services run their sessions
through ``SessionLoop`` rather than aio-pika's robust connection, which only ever returns to
the one URL it was given and re-consumes a stream from its original offset; what a service
must carry from one session to the next (a stream offset, its readiness) it keeps itself.

``Supervised`` runs a service's long-lived tasks (consumers' loops, heartbeats, the session
loop).  None of them is meant to end while the service runs, so one that does, by an error
or by returning, is a process that would look alive and do nothing: it is logged and the
owner's ``on_death`` ends the process, so its supervisor (the launcher, compose,
Kubernetes) starts a fresh one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, Final

from aio_pika.abc import AbstractConnection

from shared.connect import NodeRing

log = logging.getLogger(__name__)

# Waits between failed sessions: quick at first (a node restart takes seconds), never more
# than a couple of seconds, so a returning broker is found again promptly.
RECONNECT_DELAYS: Final = (0.2, 0.5, 1.0, 2.0)

# What a service does with one connection: set everything up, then wait on ``lost`` (set when
# the connection closes; pass channels through ``shared.connect.watch_channel`` to have it
# set when one of them closes or loses a consumer).  It returns or raises when it is over.
Session = Callable[[AbstractConnection, str, asyncio.Event], Awaitable[None]]


class SessionLoop:
    def __init__(
        self,
        urls: Sequence[str],
        connection_name: str,
        session: Session,
        *,
        delays: Sequence[float] = RECONNECT_DELAYS,
    ) -> None:
        self._nodes = NodeRing(urls)
        self._name = connection_name
        self._session = session
        self._delays = tuple(delays)
        # The node of the session running now (None between sessions), for /status.
        self.url: str | None = None

    async def run(self) -> None:
        """Sessions one after another, until cancelled."""
        attempt = 0
        while True:
            try:
                await self._one()
                attempt = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure to connect or set up: try again
                log.warning("broker session ended: %r", exc)
            await asyncio.sleep(self._delays[min(attempt, len(self._delays) - 1)])
            attempt += 1

    async def _one(self) -> None:
        connection, url = await self._nodes.connect_any(connection_name=self._name)
        lost = asyncio.Event()
        connection.close_callbacks.add(lambda *_: lost.set())
        self.url = url
        try:
            await self._session(connection, url, lost)
        finally:
            self.url = None
            if not connection.is_closed:
                # Closing can hang on a node that froze mid-session: bounded, never in the way
                # of the next session.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(connection.close(), 5)


# Told which task ended and why (None: it returned, which none of them should).
OnDeath = Callable[[str, BaseException | None], None]


class Supervised:
    """Long-lived tasks of one service, each watched: the first to end calls ``on_death``."""

    def __init__(self, on_death: OnDeath) -> None:
        self._on_death = on_death
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False

    def spawn(self, coroutine: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._ended)
        return task

    def _ended(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if self._closing or task.cancelled():
            return
        error = task.exception()
        if error is not None:
            log.critical(
                "background task %r died: %r; exiting so that a fresh process takes over",
                task.get_name(),
                error,
                exc_info=error,
            )
        else:
            log.critical(
                "background task %r returned, which it never should; exiting so that a fresh "
                "process takes over",
                task.get_name(),
            )
        self._on_death(task.get_name(), error)

    async def close(self) -> None:
        """Cancel every task (shutdown): their ending is expected now, not a death."""
        self._closing = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
