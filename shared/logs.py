"""Logging for both services: a level, and text or JSON lines, chosen by the environment.

JSON mode writes one object per line (time, level, logger, message, and every field passed
with ``extra=``), so a log shipper needs no parsing rules; a line about a job carries its
``job_id`` and ``model`` as fields (``job_fields``), so one job's lines can be found across
gateways and replicas without matching on message text.
"""

from __future__ import annotations

import asyncio
import logging
import select
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, TextIO

import orjson

from shared.errors import SettingsError
from shared.settings import CLASSIFIER, GATEWAY, Environ, env_str, variable

_LOG_LEVEL = variable(
    "IMGQ_LOG_LEVEL",
    "INFO",
    (GATEWAY, CLASSIFIER),
    "least severe log level written: `DEBUG`, `INFO`, `WARNING` or `ERROR`",
)
_LOG_FORMAT = variable(
    "IMGQ_LOG_FORMAT",
    "text",
    (GATEWAY, CLASSIFIER),
    "`text` (one readable line per entry) or `json` (one JSON object per line)",
)

_LEVELS: Final = {
    "DEBUG": logging.DEBUG,
    "INFO": logging.INFO,
    "WARNING": logging.WARNING,
    "ERROR": logging.ERROR,
}
_FORMATS: Final = ("text", "json")

# What every LogRecord has; anything else on a record came from ``extra=`` and is a field.
_STANDARD: Final = frozenset(
    vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None)).keys()
) | {"message", "asctime"}


@dataclass(frozen=True, slots=True)
class LogSettings:
    level: int = logging.INFO
    json: bool = False

    @classmethod
    def from_env(cls, env: Environ) -> LogSettings:
        level = env_str(env, _LOG_LEVEL.name, _LOG_LEVEL.default).upper()
        if level not in _LEVELS:
            raise SettingsError(
                f"{_LOG_LEVEL.name} must be one of {sorted(_LEVELS)}, got {level!r}"
            )
        form = env_str(env, _LOG_FORMAT.name, _LOG_FORMAT.default).lower()
        if form not in _FORMATS:
            raise SettingsError(f"{_LOG_FORMAT.name} must be one of {_FORMATS}, got {form!r}")
        return cls(level=_LEVELS[level], json=form == "json")


def job_fields(job_id: str, model: str) -> dict[str, str]:
    """``extra=`` for a log line about one job."""
    return {"job_id": job_id, "model": model}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (a traceback goes in ``exception``)."""

    def __init__(self, service: str, instance: int | None = None) -> None:
        super().__init__()
        self.service = service
        # Which of several processes of the service wrote it (IMGQ_GATEWAY_PROCESSES).
        self.instance = instance

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": self.service,
            **({} if self.instance is None else {"instance": self.instance}),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # default=str: a field no JSON type fits (a path, an exception) is written as text
        # rather than losing the whole line.
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    """``time level [service] logger: message``; the time's text is made once a second, not
    once a record (``time.strftime`` was a tenth of the cost of an access-log line)."""

    def __init__(self, service: str) -> None:
        super().__init__(f"%(asctime)s %(levelname)s [{service}] %(name)s: %(message)s")
        self._second = -1
        self._second_text = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        if second != self._second:
            self._second_text = time.strftime(self.default_time_format, self.converter(second))
            self._second = second
        return f"{self._second_text},{int(record.msecs):03d}"


class BatchingHandler(logging.StreamHandler[TextIO]):
    """A stream handler that writes the lines of one event-loop iteration together.

    A line logged on a thread running an event loop waits for the end of that iteration, where
    one write takes every line logged meanwhile: under load the gateway logs a line per request
    and per job, and a write per line was a syscall each.  Anything at WARNING or above, and
    any line logged where no loop runs, is written at once with whatever waits before it.  Each
    write is at most ``PIPE_BUF`` bytes of whole lines, so lines from processes sharing one
    stderr pipe never interleave mid-line.
    """

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._pending: list[str] = []
        # The loop a flush is scheduled on (one that closes first leaves it stale: a line
        # logged on another loop schedules its own).
        self._scheduled: asyncio.AbstractEventLoop | None = None

    def emit(self, record: logging.LogRecord) -> None:
        # Called with the handler's lock held (Handler.handle).
        try:
            self._pending.append(self.format(record) + self.terminator)
        except Exception:
            self.handleError(record)
            return
        if record.levelno >= logging.WARNING or not self._flush_later():
            self.flush()

    def _flush_later(self) -> bool:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        if self._scheduled is not loop:
            loop.call_soon(self.flush)
            self._scheduled = loop
        return True

    def flush(self) -> None:
        self.acquire()
        try:
            self._scheduled = None
            pending, self._pending = self._pending, []
            for chunk in _chunks(pending, PIPE_BUF):
                self.stream.write(chunk)
                self.stream.flush()
        finally:
            self.release()


# The most bytes one write to a pipe makes at once (POSIX guarantees at least 512; Linux 4096).
PIPE_BUF: Final = getattr(select, "PIPE_BUF", 512)


def _chunks(lines: list[str], limit: int) -> Iterator[str]:
    """``lines`` joined into chunks of at most ``limit`` bytes each (a longer line alone)."""
    chunk: list[str] = []
    size = 0
    for line in lines:
        length = len(line.encode("utf-8", "surrogateescape")) if not line.isascii() else len(line)
        if chunk and size + length > limit:
            yield "".join(chunk)
            chunk, size = [], 0
        chunk.append(line)
        size += length
    if chunk:
        yield "".join(chunk)


def setup_logging(settings: LogSettings, service: str, instance: int | None = None) -> None:
    """Send every logger's records to stderr, in the chosen format, from ``settings.level``;
    ``instance`` is the process' index where a service runs several (its lines say it: the
    text as ``[gateway 2]``, JSON as an ``instance`` field)."""
    handler = BatchingHandler(sys.stderr)
    if settings.json:
        handler.setFormatter(JsonFormatter(service, instance))
    else:
        handler.setFormatter(
            TextFormatter(service if instance is None else f"{service} {instance}")
        )
    # Neither format shows where a call was made from, nor the thread or process: not working
    # them out for every record is what the logging documentation's "Optimization" section
    # advises (the gateway writes an access-log line per request and a line per job).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.level)
    # warnings.warn() from libraries goes through logging too, so JSON mode stays JSON.
    logging.captureWarnings(True)
