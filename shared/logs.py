"""Logging for both services: a level, and text or JSON lines, chosen by the environment.

JSON mode writes one object per line (time, level, logger, message, and every field passed
with ``extra=``), so a log shipper needs no parsing rules; a line about a job carries its
``job_id`` and ``model`` as fields (``job_fields``), so one job's lines can be found across
gateways and replicas without matching on message text.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

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

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": self.service,
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


def setup_logging(settings: LogSettings, service: str) -> None:
    """Send every logger's records to stderr, in the chosen format, from ``settings.level``."""
    handler = logging.StreamHandler(sys.stderr)
    if settings.json:
        handler.setFormatter(JsonFormatter(service))
    else:
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s %(levelname)s [{service}] %(name)s: %(message)s")
        )
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.level)
    # warnings.warn() from libraries goes through logging too, so JSON mode stays JSON.
    logging.captureWarnings(True)
