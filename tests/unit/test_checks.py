"""gateway/checks.py: upload checks run on a few threads, and past a short line a 503 at once."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator

import orjson
import pytest

from gateway.checks import ImageChecks
from gateway.problems import from_error
from shared.errors import UploadsBusy


class _Gate:
    """A check that holds its thread until the test opens the gate."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.started = threading.Semaphore(0)

    def __call__(self, data: bytes) -> str:
        self.started.release()
        assert self.open.wait(10)
        return f"image/{data.decode()}"


@pytest.fixture
def gate() -> Iterator[_Gate]:
    gate = _Gate()
    yield gate
    gate.open.set()  # no thread is left waiting, whatever the test did


async def _until(condition: Callable[[], bool]) -> None:
    """Wait (5 s at most) for the check threads' releases to reach the event loop."""
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("not so after 5 s")


def test_past_the_threads_and_the_line_uploads_are_refused_at_once(gate: _Gate) -> None:
    async def scenario() -> None:
        checks = ImageChecks(workers=1, waiting=2, check=gate)
        assert checks.capacity == 3
        running = asyncio.ensure_future(checks.media_type(b"jpeg"))
        waiting = [asyncio.ensure_future(checks.media_type(b"png")) for _ in range(2)]
        await asyncio.to_thread(gate.started.acquire)  # the first holds the thread
        assert checks.held == 3
        with pytest.raises(UploadsBusy, match="checking 3 uploads"):
            await checks.media_type(b"webp")
        gate.open.set()
        assert await running == "image/jpeg"
        assert await asyncio.gather(*waiting) == ["image/png", "image/png"]
        await _until(lambda: checks.held == 0)
        # Room again.
        assert await checks.media_type(b"webp") == "image/webp"
        checks.close()

    asyncio.run(scenario())


def test_a_check_whose_client_left_holds_its_place_until_it_ends(gate: _Gate) -> None:
    async def scenario() -> None:
        checks = ImageChecks(workers=1, waiting=1, check=gate)
        running = asyncio.ensure_future(checks.media_type(b"jpeg"))
        in_line = asyncio.ensure_future(checks.media_type(b"png"))
        await asyncio.to_thread(gate.started.acquire)
        running.cancel()
        in_line.cancel()
        await asyncio.gather(running, in_line, return_exceptions=True)
        # The one in line never ran: its place is free.  The running one still has the
        # thread, so it still counts.
        await _until(lambda: checks.held == 1)
        with pytest.raises(UploadsBusy):
            await asyncio.gather(checks.media_type(b"a"), checks.media_type(b"b"))
        gate.open.set()
        await _until(lambda: checks.held == 0)
        checks.close()

    asyncio.run(scenario())


def test_busy_is_a_503_with_retry_after() -> None:
    response = from_error(UploadsBusy("the gateway is checking 10 uploads"))
    assert response.status == 503
    assert response.headers["Retry-After"].isdigit()
    assert response.content_type == "application/problem+json"
    assert isinstance(response.body, bytes)
    body = orjson.loads(response.body)
    assert (body["code"], body["type"]) == ("uploads_busy", "urn:imgq:problem:uploads_busy")
