"""The event loop the gateway runs on: uvloop where it is installed, else asyncio's own.

uvloop (libuv under asyncio's API) does the same work as asyncio's selector loop for less CPU:
every socket write, timer, future and task the gateway makes per request and per broker frame
costs less.  ``python -m bench`` measures the gateway on both, side by side in one run (the
"gateway alone" rows).  It is the ``gateway`` extra's dependency; ``IMGQ_EVENT_LOOP=asyncio``
runs without it.
"""

from __future__ import annotations

import asyncio
import importlib.util
from enum import StrEnum

from shared.errors import SettingsError
from shared.settings import GATEWAY, Environ, variable


class EventLoop(StrEnum):
    AUTO = "auto"
    UVLOOP = "uvloop"
    ASYNCIO = "asyncio"


_EVENT_LOOP = variable(
    "IMGQ_EVENT_LOOP",
    EventLoop.AUTO.value,
    GATEWAY,
    "`uvloop`, `asyncio` (the standard library's), or `auto`: uvloop where installed",
)


def uvloop_installed() -> bool:
    return importlib.util.find_spec("uvloop") is not None


def event_loop_from_env(env: Environ) -> EventLoop:
    """The loop asked for, ``auto`` resolved; ``uvloop`` without it installed fails at once."""
    raw = env.get(_EVENT_LOOP.name, _EVENT_LOOP.default).strip().lower()
    try:
        chosen = EventLoop(raw)
    except ValueError:
        allowed = ", ".join(loop.value for loop in EventLoop)
        raise SettingsError(f"{_EVENT_LOOP.name} must be one of {allowed}, got {raw!r}") from None
    if chosen is EventLoop.AUTO:
        return EventLoop.UVLOOP if uvloop_installed() else EventLoop.ASYNCIO
    if chosen is EventLoop.UVLOOP and not uvloop_installed():
        raise SettingsError(
            f"{_EVENT_LOOP.name}=uvloop, but uvloop is not installed (it comes with the "
            "gateway extra); install it, or set asyncio"
        )
    return chosen


def new_event_loop(loop: EventLoop) -> asyncio.AbstractEventLoop:
    if loop is EventLoop.UVLOOP:
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()
