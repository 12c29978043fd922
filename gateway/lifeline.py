"""The process ends when a background task it cannot do without dies.

``shared.session.Supervised`` tells of such a death; a gateway whose broker session loop has
died would otherwise go on answering ``/healthz`` while it can no longer take or follow a job.
So the process stops as it would on SIGTERM (long-polls answered, connections closed) and then
exits non-zero, and whatever supervises it (the launcher, compose, Kubernetes) starts a fresh
one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from typing import Final

log = logging.getLogger(__name__)

# The exit status of a process ended by a dead background task.
EXIT_STATUS: Final = 70  # EX_SOFTWARE: an internal error, not a bad setting or a signal
# Should the graceful stop itself hang (it closes broker connections), the process still ends.
_GRACE_SECONDS: Final = 30.0


class Lifeline:
    def __init__(self) -> None:
        # The task whose death ends the process; None while all is well.
        self.lost: str | None = None

    def task_died(self, name: str, error: BaseException | None) -> None:
        """``Supervised``'s ``on_death``: stop the process, which then exits non-zero."""
        if self.lost is not None:
            return
        self.lost = name
        log.critical("stopping the gateway: its background task %r ended", name)
        # aiohttp's run_app stops gracefully on SIGTERM, exactly as on an orchestrator's.
        os.kill(os.getpid(), signal.SIGTERM)
        asyncio.get_running_loop().call_later(_GRACE_SECONDS, _exit_now)

    @property
    def exit_status(self) -> int:
        return 0 if self.lost is None else EXIT_STATUS


def _exit_now() -> None:
    # os._exit skips the interpreter's exit, which would write the log lines still waiting.
    logging.shutdown()
    os._exit(EXIT_STATUS)
