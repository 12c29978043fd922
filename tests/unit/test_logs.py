"""shared/logs.py and gateway/access_log.py: the log level and format settings, the JSON
lines, the access log (both services started with IMGQ_LOG_FORMAT=json:
tests/service/test_logs.py)."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.access_log import AccessLogger, access_log_enabled
from shared.errors import SettingsError
from shared.logs import (
    PIPE_BUF,
    BatchingHandler,
    JsonFormatter,
    LogSettings,
    TextFormatter,
    job_fields,
    setup_logging,
)
from tests.cluster import MODEL

JOB_ID = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    """The root logger, put back as it was after the test reconfigures it."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield root
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.captureWarnings(False)


def test_log_settings_from_the_environment() -> None:
    assert LogSettings.from_env({}) == LogSettings(level=logging.INFO, json=False)
    settings = LogSettings.from_env({"IMGQ_LOG_LEVEL": "debug", "IMGQ_LOG_FORMAT": "JSON"})
    assert settings == LogSettings(level=logging.DEBUG, json=True)
    with pytest.raises(SettingsError, match="IMGQ_LOG_LEVEL"):
        LogSettings.from_env({"IMGQ_LOG_LEVEL": "LOUD"})
    with pytest.raises(SettingsError, match="IMGQ_LOG_FORMAT"):
        LogSettings.from_env({"IMGQ_LOG_FORMAT": "xml"})


def test_access_log_setting() -> None:
    assert access_log_enabled({}) is True
    assert access_log_enabled({"IMGQ_ACCESS_LOG": "false"}) is False
    assert access_log_enabled({"IMGQ_ACCESS_LOG": "True"}) is True
    with pytest.raises(SettingsError, match="IMGQ_ACCESS_LOG"):
        access_log_enabled({"IMGQ_ACCESS_LOG": "sometimes"})


def _record(**extra: Any) -> logging.LogRecord:
    record = logging.getLogger("imgq.test").makeRecord(
        "imgq.test", logging.WARNING, __file__, 1, "job %s: %s", (JOB_ID, 'a "quoted"\nline'), None
    )
    record.__dict__.update(extra)
    return record


def test_a_json_line_has_the_fields_and_every_extra() -> None:
    line = JsonFormatter("gateway").format(_record(**job_fields(JOB_ID, MODEL), size=3))
    assert "\n" not in line
    entry = orjson.loads(line)
    assert entry.pop("time").endswith("+00:00")
    assert entry == {
        "level": "WARNING",
        "service": "gateway",
        "logger": "imgq.test",
        "message": f'job {JOB_ID}: a "quoted"\nline',
        "job_id": JOB_ID,
        "model": MODEL,
        "size": 3,
    }


def test_a_json_line_keeps_a_traceback_and_odd_values() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = _record(path=Path("/tmp/x"))
        record.exc_info = sys.exc_info()
    entry = orjson.loads(JsonFormatter("classifier").format(record))
    assert "ValueError: boom" in entry["exception"]
    assert entry["path"] == "/tmp/x"  # written as text rather than losing the line


def test_setup_logging_sets_level_and_format(
    root_logger: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    setup_logging(LogSettings(level=logging.WARNING, json=True), "gateway")
    log = logging.getLogger("imgq.test")
    log.info("not written: below the level")
    log.warning("job %s gone", JOB_ID, extra=job_fields(JOB_ID, MODEL))
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    assert orjson.loads(lines[0])["job_id"] == JOB_ID

    setup_logging(LogSettings(level=logging.DEBUG, json=False), "classifier")
    log.debug("now written")
    (line,) = capsys.readouterr().err.splitlines()
    assert line.endswith(" DEBUG [classifier] imgq.test: now written")
    assert len(root_logger.handlers) == 1  # replaced, not added to


def test_the_access_log_line_and_its_fields(caplog: pytest.LogCaptureFixture) -> None:
    async def job(request: web.Request) -> web.Response:
        return web.Response(text="12345")

    app = web.Application()
    app.router.add_get("/classifications/{job_id}", job)
    logger = logging.getLogger("imgq.test.access")

    async def scenario() -> None:
        server = TestServer(app)
        await server.start_server(access_log=logger, access_log_class=AccessLogger)
        async with server, aiohttp.ClientSession() as session:
            url = server.make_url(f"/classifications/{JOB_ID}?wait=1")
            async with session.get(url) as response:
                assert await response.text() == "12345"
            # aiohttp writes the line once the response is sent: give it that moment.
            for _ in range(100):
                if caplog.records:
                    break
                await asyncio.sleep(0.01)

    with caplog.at_level(logging.INFO, logger.name):
        asyncio.run(scenario())
    (record,) = caplog.records
    fields = record.__dict__
    assert fields["method"] == "GET"
    assert fields["path"] == f"/classifications/{JOB_ID}?wait=1"
    assert fields["status"] == 200
    # Bytes sent, headers included (as aiohttp's own %b): more than the 5-byte body.
    assert fields["size"] > 5 + len("HTTP/1.1 200 OK\r\n")
    assert 0 <= fields["duration"] < 5
    assert fields["client"] == "127.0.0.1"
    assert fields["job_id"] == JOB_ID
    assert record.getMessage().startswith(
        f"GET /classifications/{JOB_ID}?wait=1 200 {fields['size']} B "
    )


class _Writes:
    """A stream that keeps each write apart: what reached the file descriptor, call by call."""

    def __init__(self) -> None:
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return len(text)

    def flush(self) -> None:
        pass


def _batching(stream: _Writes) -> logging.Logger:
    handler = BatchingHandler(stream)  # type: ignore[arg-type]
    handler.setFormatter(logging.Formatter("%(message)s"))
    log = logging.getLogger(f"imgq.test.batching.{id(stream)}")
    log.propagate = False
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    return log


def test_lines_of_one_loop_iteration_are_written_together() -> None:
    stream = _Writes()
    log = _batching(stream)

    async def scenario() -> list[str]:
        for i in range(3):
            log.info("line %d", i)
        written_meanwhile = list(stream.writes)
        await asyncio.sleep(0)  # the end of this iteration: the lines go out
        assert stream.writes == ["line 0\nline 1\nline 2\n"]
        log.info("next")
        await asyncio.sleep(0)
        return written_meanwhile

    assert asyncio.run(scenario()) == []
    assert stream.writes == ["line 0\nline 1\nline 2\n", "next\n"]


def test_a_warning_or_a_line_without_a_loop_is_written_at_once_after_what_waits() -> None:
    stream = _Writes()
    log = _batching(stream)
    log.info("no loop here")
    assert stream.writes == ["no loop here\n"]

    async def scenario() -> None:
        log.info("waits")
        log.warning("goes now")
        assert stream.writes[1:] == ["waits\ngoes now\n"]

    asyncio.run(scenario())


def test_a_write_never_splits_a_line_nor_passes_pipe_buf() -> None:
    stream = _Writes()
    log = _batching(stream)
    line = "x" * 999

    async def scenario() -> None:
        for _ in range(10):
            log.info(line)
        log.info("é" * 3000)  # 6000 bytes of UTF-8: written on its own
        await asyncio.sleep(0)

    asyncio.run(scenario())
    assert "".join(stream.writes) == f"{line}\n" * 10 + "é" * 3000 + "\n"
    for write in stream.writes:
        assert write.endswith("\n")
        assert len(write.encode()) <= max(PIPE_BUF, 6001)
    assert len(stream.writes[0].encode()) == 4 * 1000  # as many whole lines as fit in 4096


def test_the_text_time_is_as_logging_writes_it() -> None:
    record = _record()
    ours = TextFormatter("gateway").formatTime(record)
    assert ours == logging.Formatter().formatTime(record)


def test_a_process_among_several_says_which_it_is(
    root_logger: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    log = logging.getLogger("imgq.test")
    setup_logging(LogSettings(level=logging.INFO, json=True), "gateway", 2)
    log.info("hello")
    entry = orjson.loads(capsys.readouterr().err)
    assert (entry["service"], entry["instance"]) == ("gateway", 2)
    setup_logging(LogSettings(level=logging.INFO, json=False), "gateway", 2)
    log.info("hello")
    assert capsys.readouterr().err.rstrip().endswith(" INFO [gateway 2] imgq.test: hello")
