"""A bounded run of jobs over a fixed number of concurrent clients, and what it measured."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise

import aiohttp


class JobFailed(Exception):
    """A job did not succeed, or the service answered with an error."""


@dataclass(frozen=True, slots=True)
class Done:
    """A job that succeeded: its latency as the client saw it, and where it ran."""

    seconds: float  # from just before the submit to the client holding the result
    replica: str
    started_at: float  # the replica's clock: when it took the job (or its batch)
    finished_at: float  # ... and when inference ended
    submitted: float = 0.0  # the client's clock (time.time()) just before the submit


@dataclass
class LoadResult:
    jobs: int = 0
    failed: int = 0
    elapsed: float = 0.0
    # Seconds from submit to the result being visible to the client, with the image's name.
    per_image: list[tuple[str, float]] = field(default_factory=list)
    # (replica, started_at, finished_at) of every job, to see how busy the replicas were.
    spans: list[tuple[str, float, float]] = field(default_factory=list)
    # Where each job's time went, in seconds (one machine, one clock): from the submit to a
    # replica starting it, its inference, and from the inference's end to the client holding
    # the result.  Empty where the client did not note when it submitted.
    stages: list[tuple[float, float, float]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def latencies(self) -> list[float]:
        return [seconds for _, seconds in self.per_image]

    @property
    def throughput(self) -> float:
        return self.jobs / self.elapsed if self.elapsed > 0 else 0.0


# One job: given an image name, run it end to end.
Job = Callable[[str], Awaitable[Done]]


async def run_jobs(
    job: Job,
    images: Sequence[str],
    *,
    jobs: int,
    concurrency: int,
    max_seconds: float = float("inf"),
) -> LoadResult:
    """``jobs`` jobs, cycling through ``images``, with at most ``concurrency`` in flight; no
    new job starts after ``max_seconds`` (a slow machine still finishes in bounded time)."""
    result = LoadResult()
    next_job = 0
    deadline = time.perf_counter() + max_seconds

    async def client() -> None:
        nonlocal next_job
        while next_job < jobs and time.perf_counter() < deadline:
            image = images[next_job % len(images)]
            next_job += 1
            try:
                done = await job(image)
            except (JobFailed, aiohttp.ClientError, TimeoutError) as exc:
                result.failed += 1
                if len(result.errors) < 10:
                    result.errors.append(repr(exc))
                continue
            result.jobs += 1
            result.per_image.append((image, done.seconds))
            result.spans.append((done.replica, done.started_at, done.finished_at))
            if done.submitted:
                result.stages.append(
                    (
                        done.started_at - done.submitted,
                        done.finished_at - done.started_at,
                        done.submitted + done.seconds - done.finished_at,
                    )
                )

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(max(1, min(concurrency, jobs)))))
    result.elapsed = time.perf_counter() - started
    return result


def replica_gaps(spans: Sequence[tuple[str, float, float]]) -> list[float]:
    """Seconds each replica spent between finishing one batch and starting the next.

    Under a saturating load a replica always has work waiting, so these gaps are pure
    overhead: publishing results, acks, taking the next job.  Jobs of one batch share their
    span; gaps longer than a second mean the replica simply had nothing to do.
    """
    by_replica: dict[str, set[tuple[float, float]]] = {}
    for replica, started, finished in spans:
        by_replica.setdefault(replica, set()).add((started, finished))
    gaps = []
    for batches in by_replica.values():
        ordered = sorted(batches)
        for (_, finished), (started, _) in pairwise(ordered):
            if 0 <= started - finished < 1.0:
                gaps.append(started - finished)
    return gaps
