"""OpenTelemetry traces (shared/tracing.py): one trace per job, across the broker; off = no-op."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from shared import tracing, wire
from shared.errors import JobTimedOut, SettingsError
from shared.messages import ClassifyRequest, JobEvent, new_job_id
from shared.states import JobStatus
from tests import api
from tests.cluster import MODEL, Cluster
from tests.wire_helpers import delivered

REPO = Path(__file__).resolve().parent.parent
# A client's own trace: the job's spans must all join it.
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"


def _request(**changes: Any) -> ClassifyRequest:
    fields: dict[str, Any] = {
        "job_id": new_job_id(),
        "model": MODEL,
        "image_name": "cat.jpg",
        "image": b"\xff\xd8 not really a jpeg",
        "queued_at": time.time(),
    } | changes
    return ClassifyRequest(**fields)


# -- settings ------------------------------------------------------------------------------


def test_off_unless_asked_for() -> None:
    assert tracing.TracingSettings.from_env({}).exporter is tracing.Exporter.OFF
    assert tracing.TracingSettings.from_env({"IMGQ_TRACING": "off"}).exporter.value == "off"
    standard = tracing.TracingSettings.from_env({"OTEL_TRACES_EXPORTER": "none"})
    assert standard.exporter is tracing.Exporter.OFF


def test_the_setting_and_the_standard_variables() -> None:
    chosen = tracing.TracingSettings.from_env(
        {"IMGQ_TRACING": "file:/tmp/spans.jsonl", "OTEL_SERVICE_NAME": "edge-gw"}
    )
    assert chosen == tracing.TracingSettings(tracing.Exporter.FILE, "/tmp/spans.jsonl", "edge-gw")
    # Unset, the standard variable decides; the imgq setting wins over it.
    standard = tracing.TracingSettings.from_env({"OTEL_TRACES_EXPORTER": "console"})
    assert standard.exporter is tracing.Exporter.CONSOLE
    both = {"IMGQ_TRACING": "otlp", "OTEL_TRACES_EXPORTER": "console"}
    assert tracing.TracingSettings.from_env(both).exporter is tracing.Exporter.OTLP
    disabled = {"IMGQ_TRACING": "otlp", "OTEL_SDK_DISABLED": "true"}
    assert tracing.TracingSettings.from_env(disabled).exporter is tracing.Exporter.OFF


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"IMGQ_TRACING": "jaeger"}, "IMGQ_TRACING must be"),
        ({"IMGQ_TRACING": "file:"}, "needs a path"),
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER must be"),
    ],
)
def test_bad_values_fail_at_start_up(env: dict[str, str], says: str) -> None:
    with pytest.raises(SettingsError, match=says):
        tracing.TracingSettings.from_env(env)


# -- without OpenTelemetry -----------------------------------------------------------------


@pytest.fixture
def no_opentelemetry(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if the extra were not installed: every ``import opentelemetry...`` fails."""
    for name in [name for name in sys.modules if name.startswith("opentelemetry.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "opentelemetry", None)


@pytest.mark.usefixtures("no_opentelemetry")
def test_without_the_extra_every_hook_is_a_no_op() -> None:
    assert not tracing.otel_installed()
    # The standard variable alone does not stop an image built without the extra...
    off = tracing.TracingSettings.from_env({"OTEL_TRACES_EXPORTER": "otlp"})
    assert off.exporter is tracing.Exporter.OFF
    # ...but asking imgq for traces it cannot produce fails at once.
    with pytest.raises(SettingsError, match=r"imgq-services\[otel\]"):
        tracing.TracingSettings.from_env({"IMGQ_TRACING": "otlp"})

    request = _request()
    with tracing.started(off, "imgq-test"):
        # No server span is current while a request is handled: nothing to propagate.
        with tracing.server_span("POST", "/classifications", "/classifications", "http", {}):
            assert tracing.outgoing_headers() == {}
        with tracing.publishing(request):
            out = wire.request_message(request)
        assert set(out.message.headers or {}) == {"v", "model", "image_name", "queued_at_us"}
        final = JobEvent.for_request(request, JobStatus.SUCCEEDED)
        assert wire.event_message(final).message.headers in (None, {})
        headers = {"traceparent": TRACEPARENT}
        with tracing.applying(final, headers, live=True):
            pass
        with tracing.BatchTrace("replica-1", [(request, headers)]) as traces:
            traces.inference(time.time(), time.time(), [JobTimedOut("slow")])
            with traces.publishing(final):
                pass


def test_importing_the_services_imports_no_opentelemetry() -> None:
    code = (
        "import sys, gateway.__main__, classifier_service.__main__, shared.wire; "
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))"
    )
    found = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert found.stdout.strip() == "[]"


# -- with OpenTelemetry, in process --------------------------------------------------------


def _spans(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@contextlib.contextmanager
def _traced(path: Path) -> Iterator[None]:
    pytest.importorskip("opentelemetry.sdk", reason="the otel extra is not installed")
    with tracing.started(tracing.TracingSettings(tracing.Exporter.FILE, str(path)), "imgq-test"):
        yield


def test_messages_carry_the_sending_span(tmp_path: Path) -> None:
    request = _request()
    with _traced(tmp_path / "spans.jsonl"), tracing.publishing(request):
        out = wire.request_message(request)
    (span,) = _spans(tmp_path / "spans.jsonl")
    carried = wire.trace_headers(delivered(out.message))
    span_id = span["context"]["span_id"].removeprefix("0x")
    trace_id = span["context"]["trace_id"].removeprefix("0x")
    # version-trace-span-flags (the SDK sets the "random trace ID" flag besides "sampled").
    assert carried.keys() == {"traceparent"}
    assert carried["traceparent"].split("-")[:3] == ["00", trace_id, span_id]
    assert wire.parse_request(delivered(out.message)).job_id == request.job_id


def test_a_malformed_context_costs_the_parent_not_the_job() -> None:
    message = aio_pika.Message(
        b"\xff\xd8",
        message_id=new_job_id(),
        headers={
            "v": 2,
            "model": MODEL,
            "image_name": "x.jpg",
            "queued_at_us": 1,
            "traceparent": 7,
        },
    )
    assert wire.trace_headers(delivered(message)) == {}
    assert wire.parse_request(delivered(message)).model == MODEL


def test_a_batch_records_queue_wait_inference_and_failures(tmp_path: Path) -> None:
    ok, slow = _request(queued_at=time.time() - 2.0), _request()
    parent = {"traceparent": TRACEPARENT}
    batch = tracing.BatchTrace  # built inside the with: tracing must be on by then
    with _traced(tmp_path / "spans.jsonl"), batch("r-1", [(ok, parent), (slow, {})]) as traces:
        begun = time.time()
        traces.inference(begun, begun + 0.25, [(), JobTimedOut("took too long")])
    spans = _spans(tmp_path / "spans.jsonl")
    by_name: dict[str, list[dict[str, Any]]] = {}
    for span in spans:
        by_name.setdefault(span["name"], []).append(span)
    assert sorted(by_name) == ["inference", "process job", "queue wait"]
    process = {s["attributes"]["imgq.job_id"]: s for s in by_name["process job"]}
    # The job that came with a context joins that trace; the other starts its own.
    assert process[ok.job_id]["context"]["trace_id"] == f"0x{CLIENT_TRACE}"
    assert process[ok.job_id]["parent_id"] == f"0x{CLIENT_SPAN}"
    assert process[slow.job_id]["parent_id"] is None
    assert process[ok.job_id]["attributes"]["imgq.queue_wait_s"] >= 2.0
    waits = {s["parent_id"]: s for s in by_name["queue wait"]}
    wait = waits[process[ok.job_id]["context"]["span_id"]]
    assert 2.0 <= _seconds(wait) < 10
    failed = {s["parent_id"]: s for s in by_name["inference"]}[
        process[slow.job_id]["context"]["span_id"]
    ]
    assert failed["status"]["status_code"] == "ERROR"
    assert failed["attributes"]["imgq.error"] == "time_limit_exceeded"
    assert process[slow.job_id]["status"]["status_code"] == "ERROR"
    assert process[ok.job_id]["status"]["status_code"] == "UNSET"


def _time(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def _seconds(span: dict[str, Any]) -> float:
    return _time(span["end_time"]) - _time(span["start_time"])


# -- one job through the real services -----------------------------------------------------


def _wait_for_spans(
    paths: list[Path], names: set[str], timeout: float = 30
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        spans = [span for path in paths for span in _spans(path)]
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
                f"{span['kind'].removeprefix('SpanKind.'):<9} {_seconds(span) * 1000:9.1f} ms"
            )
            walk(span["context"]["span_id"], depth + 1)

    walk(None, 0)
    return "\n".join(lines)


@pytest.mark.broker
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
    assert abs(_time(wait["start_time"]) - final["queued_at"]) < 0.01
    assert wait["end_time"] == by_name["process job"]["start_time"]
    assert final["queued_at"] < replica_started < _time(wait["end_time"])
    assert _time(wait["end_time"]) <= final["started_at"] + 0.001
    assert _seconds(by_name["inference"]) > 0
