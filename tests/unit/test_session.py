"""shared/session.py: a background task that ends is a death the process is told of."""

from __future__ import annotations

import asyncio

from shared.session import Supervised


def test_a_task_that_raises_or_returns_is_reported_and_a_cancelled_one_is_not() -> None:
    deaths: list[tuple[str, str | None]] = []

    async def scenario() -> None:
        tasks = Supervised(
            lambda name, error: deaths.append((name, repr(error) if error else None))
        )

        async def crash() -> None:
            raise RuntimeError("boom")

        async def finish() -> None:
            return None

        async def forever() -> None:
            await asyncio.Event().wait()

        tasks.spawn(crash(), "crashes")
        tasks.spawn(finish(), "returns")
        tasks.spawn(forever(), "runs")
        for _ in range(3):
            await asyncio.sleep(0)
        await tasks.close()

    asyncio.run(scenario())
    assert sorted(deaths) == [("crashes", "RuntimeError('boom')"), ("returns", None)]
