"""IMGQ_EVENT_LOOP: uvloop where installed, asyncio's own loop on request."""

from __future__ import annotations

import asyncio

import pytest

from gateway import event_loop
from gateway.event_loop import EventLoop, event_loop_from_env, new_event_loop
from shared.errors import SettingsError


def test_auto_is_uvloop_where_installed_else_asyncio(monkeypatch: pytest.MonkeyPatch) -> None:
    assert event_loop.uvloop_installed(), "uvloop comes with the gateway extra"
    assert event_loop_from_env({}) is EventLoop.UVLOOP
    assert event_loop_from_env({"IMGQ_EVENT_LOOP": "asyncio"}) is EventLoop.ASYNCIO
    assert event_loop_from_env({"IMGQ_EVENT_LOOP": " UVLoop "}) is EventLoop.UVLOOP
    monkeypatch.setattr(event_loop, "uvloop_installed", lambda: False)
    assert event_loop_from_env({"IMGQ_EVENT_LOOP": "auto"}) is EventLoop.ASYNCIO
    with pytest.raises(SettingsError, match="uvloop is not installed"):
        event_loop_from_env({"IMGQ_EVENT_LOOP": "uvloop"})


def test_a_bad_value_fails_at_once_naming_the_choices() -> None:
    with pytest.raises(SettingsError, match="IMGQ_EVENT_LOOP must be one of auto, uvloop"):
        event_loop_from_env({"IMGQ_EVENT_LOOP": "trio"})


@pytest.mark.parametrize("choice", list(EventLoop)[1:])
def test_the_loop_runs_what_the_gateway_runs(choice: EventLoop) -> None:
    loop = new_event_loop(choice)
    try:
        assert (type(loop).__module__.split(".")[0] == "uvloop") == (choice is EventLoop.UVLOOP)

        async def answer() -> int:
            await asyncio.sleep(0)
            return 42

        assert loop.run_until_complete(answer()) == 42
    finally:
        loop.close()
