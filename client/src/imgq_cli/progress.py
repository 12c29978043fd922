"""How far a run has got, on stderr: on a terminal one line that updates in place; elsewhere
(a log, a pipe) a plain line every few seconds.  Notes (a batch created, a retry) are printed
above it.  The clock is passed in, so the pacing is tested without waiting."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO

# Seconds between plain lines when stderr is not a terminal.
PLAIN_INTERVAL = 5.0
# Seconds between redraws of the terminal line (often enough to look live).
REDRAW_INTERVAL = 0.1
# Back to the start of the line, and erase it.
CLEAR_LINE = "\r\x1b[K"


def duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02}:{secs:02}" if hours else f"{minutes}:{secs:02}"


class Progress:
    def __init__(
        self,
        total: int,
        stream: TextIO,
        *,
        tty: bool,
        enabled: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total = total
        self.succeeded = 0
        self.failed = 0
        self._stream = stream
        self._tty = tty
        self._enabled = enabled
        self._clock = clock
        self.started = clock()
        self._shown_at = self.started
        self._drawn = False

    @property
    def done(self) -> int:
        return self.succeeded + self.failed

    @property
    def elapsed(self) -> float:
        return self._clock() - self.started

    def rate(self) -> float:
        elapsed = self.elapsed
        return self.done / elapsed if elapsed > 0 else 0.0

    def line(self) -> str:
        rate = self.rate()
        left = self.total - self.done
        eta = duration(left / rate) if rate > 0 else "-"
        return f"{self.done}/{self.total} done, {self.failed} failed, {rate:.1f} jobs/s, ETA {eta}"

    def finished_one(self, ok: bool) -> None:
        if ok:
            self.succeeded += 1
        else:
            self.failed += 1
        self._changed()

    def set(self, succeeded: int, failed: int) -> None:
        """Counts read from the server (a batch followed from outside)."""
        self.succeeded, self.failed = succeeded, failed
        self._changed()

    def _changed(self) -> None:
        if not self._enabled:
            return
        now = self._clock()
        interval = REDRAW_INTERVAL if self._tty else PLAIN_INTERVAL
        if now - self._shown_at >= interval or (self._tty and self.done == self.total):
            self._shown_at = now
            self._show()

    def note(self, text: str, *, always: bool = False) -> None:
        """A line of its own above the progress line (``always``: even when quiet)."""
        if not (self._enabled or always):
            return
        if self._drawn:
            self._stream.write(CLEAR_LINE)
        self._stream.write(text + "\n")
        if self._drawn:
            self._stream.write(self.line())
        self._stream.flush()

    def close(self) -> None:
        """End the terminal line, so what follows starts on a line of its own."""
        if self._drawn:
            self._stream.write("\n")
            self._stream.flush()
            self._drawn = False

    def _show(self) -> None:
        if self._tty:
            self._stream.write(CLEAR_LINE + self.line())
            self._drawn = True
        else:
            self._stream.write(self.line() + "\n")
        self._stream.flush()
