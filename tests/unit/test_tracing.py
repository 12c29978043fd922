"""OpenTelemetry traces (shared/tracing.py): the settings, off = no-op, and the trace context
messages carry (one trace per job across a real broker: tests/service/test_tracing.py)."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from shared import tracing, wire
from shared.errors import JobTimedOut, SettingsError
from shared.messages import ClassifyRequest, JobEvent, new_job_id
from shared.states import JobStatus
from tests.cluster import MODEL
from tests.conftest import REPO
from tests.spans import CLIENT_SPAN, CLIENT_TRACE, TRACEPARENT, read_spans, span_seconds
from tests.wire_helpers import delivered


def _request(**changes: Any) -> ClassifyRequest:
    fields: dict[str, Any] = {
        "job_id": new_job_id(),
        "model": MODEL,
        "image_name": "cat.jpg",
        "image": b"\xff\xd8 not really a jpeg",
        "queued_at": time.time(),
    } | changes
    return ClassifyRequest(**fields)


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


@contextlib.contextmanager
def _traced(path: Path) -> Iterator[None]:
    pytest.importorskip("opentelemetry.sdk", reason="the otel extra is not installed")
    with tracing.started(tracing.TracingSettings(tracing.Exporter.FILE, str(path)), "imgq-test"):
        yield


def test_messages_carry_the_sending_span(tmp_path: Path) -> None:
    request = _request()
    with _traced(tmp_path / "spans.jsonl"), tracing.publishing(request):
        out = wire.request_message(request)
    (span,) = read_spans(tmp_path / "spans.jsonl")
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
    spans = read_spans(tmp_path / "spans.jsonl")
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
    assert 2.0 <= span_seconds(wait) < 10
    failed = {s["parent_id"]: s for s in by_name["inference"]}[
        process[slow.job_id]["context"]["span_id"]
    ]
    assert failed["status"]["status_code"] == "ERROR"
    assert failed["attributes"]["imgq.error"] == "time_limit_exceeded"
    assert process[slow.job_id]["status"]["status_code"] == "ERROR"
    assert process[ok.job_id]["status"]["status_code"] == "UNSET"
