"""Percentiles and latency summaries: the little arithmetic every measurement shares."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100), interpolating linearly between the closest ranks.

    The same definition as numpy's default (``method="linear"``): the 50th of [1, 2, 3, 4] is
    2.5, the 0th is the minimum and the 100th the maximum.
    """
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100 or math.isnan(q):
        raise ValueError(f"percentile must be within 0..100, got {q}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True, slots=True)
class Latency:
    """Latency percentiles in milliseconds."""

    count: int
    p50: float
    p95: float
    p99: float

    @classmethod
    def of_seconds(cls, seconds: Sequence[float]) -> Latency:
        ms = [s * 1000 for s in seconds]
        return cls(len(ms), percentile(ms, 50), percentile(ms, 95), percentile(ms, 99))

    def __str__(self) -> str:
        return f"{self.p50:.0f} / {self.p95:.0f} / {self.p99:.0f}"


def rate(count: int, seconds: float) -> float:
    """Events per second; zero when nothing was timed."""
    return count / seconds if seconds > 0 else 0.0
