"""OpenTelemetry traces (shared/tracing.py): one trace follows a job through the broker and back
(the settings, the no-op and the context messages carry: tests/unit/test_tracing.py)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests import api
from tests.cluster import MODEL, Cluster
from tests.spans import CLIENT_SPAN, CLIENT_TRACE, TRACEPARENT, read_spans, span_seconds, span_time


def _wait_for_spans(
    paths: list[Path], names: set[str], timeout: float = 30
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        spans = [span for path in paths for span in read_spans(path)]
        if names <= {span["name"] for span in spans} or time.monotonic() > deadline:
            return spans
        time.sleep(0.2)


def _tree(spans: list[dict[str, Any]]) -> str:
    """The trace as an indented tree, each span with its service and duration."""
    children: dict[str | None, list[dict[str, Any]]] = {}
    ids = {span["context"]["span_id"] for span in spans}
    for span in sorted(spans, key=lambda s: s["start_time"]):
        parent = span["parent_id"] if span["parent_id"] in ids else None
        children.setdefault(parent, []).append(span)
    lines: list[str] = []

    def walk(parent: str | None, depth: int) -> None:
        for span in children.get(parent, []):
            service = span["resource"]["attributes"]["service.name"]
            lines.append(
                f"{'  ' * depth}{span['name']:<{28 - 2 * depth}} {service:<16} "
                f"{span['kind'].removeprefix('SpanKind.'):<9} {span_seconds(span) * 1000:9.1f} ms"
            )
            walk(span["context"]["span_id"], depth + 1)

    walk(None, 0)
    return "\n".join(lines)


def test_one_trace_follows_a_job_through_the_broker_and_back(
    cluster: Cluster, tmp_path: Path
) -> None:
    pytest.importorskip("opentelemetry.sdk", reason="the otel extra is not installed")
    gateway_spans, replica_spans = tmp_path / "gateway.jsonl", tmp_path / "replica.jsonl"
    # Exported within 0.1 s of ending rather than 5 s (OpenTelemetry's standard variable).
    cluster.env["OTEL_BSP_SCHEDULE_DELAY"] = "100"
    _, url = cluster.start_gateway(IMGQ_TRACING=f"file:{gateway_spans}")
    reply = api.post_json(
        url,
        "/classifications",
        {"model": MODEL, "image": "cat.jpg"},
        {"traceparent": TRACEPARENT, "Cache-Control": "no-cache"},
    )
    assert reply.status == 202, reply.body
    job_id = reply.json()["job_id"]
    # No replica yet: the job waits in the queue until one starts.
    replica_started = time.time()
    cluster.start_replica(IMGQ_TRACING=f"file:{replica_spans}")
    cluster.wait_replicas(1)
    final = api.wait_final(url, job_id)
    assert final["status"] == "succeeded"

    expected = {
        "POST /classifications",
        "publish imgq.requests",
        "process job",
        "queue wait",
        "inference",
        "publish result",
        "apply result",
    }
    spans = _wait_for_spans([gateway_spans, replica_spans], expected)
    job = [s for s in spans if s["context"]["trace_id"] == f"0x{CLIENT_TRACE}"]
    print(f"\na trace of one job ({job_id}):\n{_tree(job)}")
    by_name = {span["name"]: span for span in job}
    assert set(by_name) == expected, _tree(spans)

    def parent_of(name: str) -> str:
        parent_ids = {s["context"]["span_id"]: s["name"] for s in job}
        return parent_ids.get(by_name[name]["parent_id"], by_name[name]["parent_id"])

    server = by_name["POST /classifications"]
    assert server["parent_id"] == f"0x{CLIENT_SPAN}"
    assert server["kind"] == "SpanKind.SERVER"
    assert server["attributes"]["http.response.status_code"] == 202
    assert parent_of("publish imgq.requests") == "POST /classifications"
    assert parent_of("process job") == "publish imgq.requests"
    for step in ("queue wait", "inference", "publish result"):
        assert parent_of(step) == "process job"
    assert parent_of("apply result") == "publish result"
    for name, service in [
        ("publish imgq.requests", "imgq-gateway"),
        ("process job", "imgq-classifier"),
    ]:
        assert by_name[name]["resource"]["attributes"]["service.name"] == service
        assert by_name[name]["attributes"]["imgq.job_id"] == job_id
        assert by_name[name]["attributes"]["messaging.system"] == "rabbitmq"
    assert by_name["apply result"]["resource"]["attributes"]["service.name"] == "imgq-gateway"
    # The wait runs from the job's queued_at to the moment the replica took it: after the
    # replica process was started (the job was queued before), and no later than the job's
    # own started_at.  Relations between recorded times, so it holds on any machine's speed.
    wait = by_name["queue wait"]
    assert abs(span_time(wait["start_time"]) - final["queued_at"]) < 0.01
    assert wait["end_time"] == by_name["process job"]["start_time"]
    assert final["queued_at"] < replica_started < span_time(wait["end_time"])
    assert span_time(wait["end_time"]) <= final["started_at"] + 0.001
    assert span_seconds(by_name["inference"]) > 0
