"""What both services' metrics have in common: a registry of their own, and its exposition.

prometheus_client is the library every scraper and dashboard is written against, so the
text it writes is the text they expect.  Each service keeps a ``CollectorRegistry`` of its
own rather than the library's global one: two registries in one process (the tests start
several apps) must not collide on metric names, and nothing imported by accident lands in
``/metrics``.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)

CONTENT_TYPE: Final = CONTENT_TYPE_LATEST

# Seconds, for latencies from a few milliseconds (a reused result) to minutes (a backlog).
LATENCY_BUCKETS: Final = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300,
)  # fmt: skip


def new_registry() -> CollectorRegistry:
    """A registry with the process' own metrics: memory, CPU seconds, open files, and the
    Python version (``process_*``, ``python_info``; the process ones only where /proc is)."""
    # A *_created sample beside every counter and histogram doubles the series for a value
    # nobody here reads (process_start_time_seconds says when the counts began).  The switch
    # is process-wide in prometheus_client; both services want it off.
    disable_created_metrics()  # type: ignore[no-untyped-call]
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


def expose(registry: CollectorRegistry) -> bytes:
    """The registry in the Prometheus text format, served with ``CONTENT_TYPE``."""
    return generate_latest(registry)
