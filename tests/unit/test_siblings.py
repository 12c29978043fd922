"""One /metrics for several gateway processes: every process' series, labelled with it, each
family once, and the broker's queue depths once (the probes across processes are exercised
on real processes in tests/service/test_processes.py)."""

from __future__ import annotations

from gateway.metrics import GatewayMetrics
from gateway.siblings import PROCESS_LABEL, merge
from tests.prometheus import parse


def _exposition(jobs: int, polls: int, depths: dict[str, int | None]) -> str:
    metrics = GatewayMetrics()
    for _ in range(jobs):
        metrics.http_answered("/classifications", "POST", 202, 0.002)
    return metrics.expose(long_polls=polls, queue_depths=depths).decode()


def test_every_process_series_is_kept_under_its_label_and_queue_depths_once() -> None:
    merged = merge(
        {
            0: _exposition(3, polls=1, depths={"imgq.model.a": 7}),
            1: _exposition(5, polls=2, depths={}),
        }
    ).decode()
    parsed = parse(merged)  # the reference parser reads it: each family once, no duplicate
    route = {"route": "/classifications", "method": "POST", "status": "202"}
    for process, jobs in (("0", 3), ("1", 5)):
        assert parsed.value("imgq_http_requests_total", **route, process=process) == jobs
        count = parsed.value(
            "imgq_http_request_duration_seconds_count", route="/classifications", process=process
        )
        assert count == jobs
    assert parsed.types["imgq_http_requests"] == "counter"
    assert parsed.types["imgq_http_request_duration_seconds"] == "histogram"
    assert parsed.series("imgq_long_polls_waiting") == {
        frozenset({(PROCESS_LABEL, "0")}): 1,
        frozenset({(PROCESS_LABEL, "1")}): 2,
    }
    # The broker's, as the process that took the scrape read it: no process label.
    assert parsed.series("imgq_queue_depth") == {frozenset({("queue", "imgq.model.a")}): 7}
    # Each process' own memory and CPU.
    resident = parsed.series("process_resident_memory_bytes")
    assert {dict(labels)[PROCESS_LABEL] for labels in resident} == {"0", "1"}
