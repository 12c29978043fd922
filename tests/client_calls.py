"""One call through either ``imgq`` client, so a test runs the same steps over both."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import imgq


def with_client(kind: str, url: str, call: Callable[[Any], Any], **options: Any) -> Any:
    """``call(client)`` with a sync client (``kind`` "sync"), or awaited with an async one."""
    if kind == "sync":
        with imgq.Client(url, **options) as client:
            return call(client)

    async def scenario() -> Any:
        async with imgq.AsyncClient(url, **options) as client:
            return await call(client)

    return asyncio.run(scenario())
