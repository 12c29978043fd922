"""The replica's batch loop, without a broker (pure unit tests)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from classifier_service.settings import ClassifierSettings
from classifier_service.worker import Replica


def _batches(batch_size: int, wait_ms: int, arrivals: list[float]) -> list[int]:
    """Sizes of the batches the loop forms for messages arriving at these times (s)."""

    async def scenario() -> list[int]:
        settings = ClassifierSettings.from_env(
            {"IMGQ_BATCH_SIZE": str(batch_size), "IMGQ_BATCH_WAIT_MS": str(wait_ms)}
        )
        replica = Replica(settings, {})
        sizes: list[int] = []

        async def record(batch: Sequence[Any]) -> None:
            sizes.append(len(batch))

        replica._process = record  # type: ignore[method-assign]
        loop = asyncio.get_running_loop()
        for at in arrivals:
            loop.call_later(at, replica._inbox.put_nowait, object())
        task = asyncio.create_task(replica._batch_loop())
        await asyncio.sleep(max(arrivals) + wait_ms / 1000 + 0.1)
        task.cancel()
        return sizes

    return asyncio.run(scenario())


def test_jobs_already_in_hand_form_a_batch_with_no_wait() -> None:
    # Ten jobs arrive together; with no batch wait the loop still takes what is there.
    assert _batches(4, 0, [0.0] * 10) == [4, 4, 2]


def test_batch_wait_collects_later_jobs() -> None:
    assert _batches(4, 200, [0.0, 0.05, 0.1]) == [3]


def test_batch_size_one_never_batches() -> None:
    assert _batches(1, 50, [0.0] * 3) == [1, 1, 1]


@pytest.mark.parametrize("wait_ms", [0, 20])
def test_a_lone_job_is_not_held_longer_than_the_wait(wait_ms: int) -> None:
    assert _batches(4, wait_ms, [0.0]) == [1]
