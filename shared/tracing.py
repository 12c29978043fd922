"""OpenTelemetry traces of a job: from the HTTP request through the broker to a replica and back.

Optional.  Tracing needs the ``otel`` extra (``pip install 'imgq-services[otel]'``) and is turned on
with ``IMGQ_TRACING`` (or the standard ``OTEL_TRACES_EXPORTER``).  Off, every hook below
is a no-op and OpenTelemetry is never imported: the services run exactly as without it.

One job is one trace (the client's, when its request carries a W3C ``traceparent``)::

    POST /classifications       gateway  SERVER    parent: the client's traceparent
    └─ publish imgq.requests    gateway  PRODUCER  its context rides in the request's headers
       └─ process job           replica  CONSUMER  from when the replica takes the job to its ack
          ├─ queue wait         replica            from queued_at_us to when it was taken
          ├─ inference          replica            the batch's decode and forward pass
          └─ publish result     replica  PRODUCER  its context rides in the final event
             └─ apply result    gateway  CONSUMER  each gateway, as the event reaches its store

The context travels in the ``traceparent``/``tracestate`` AMQP headers (``shared/wire.py``
writes them on requests and events, and reads them back).  All OpenTelemetry code is here;
the services only call the hooks, so they read the same with tracing on or off.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

from shared.errors import ImgqError, SettingsError
from shared.messages import ClassifyRequest, JobEvent
from shared.settings import CLASSIFIER, GATEWAY, Environ, variable
from shared.topology import REQUESTS_QUEUE

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

log = logging.getLogger(__name__)


class Exporter(StrEnum):
    OFF = "off"
    # OTLP over HTTP; where to, and how, from the standard OTEL_EXPORTER_OTLP_* variables.
    OTLP = "otlp"
    # One JSON span a line on stdout (the service's log).
    CONSOLE = "console"
    # One JSON span a line appended to a file: what the tests read.
    FILE = "file"


_TRACING = variable(
    "IMGQ_TRACING",
    "",
    (GATEWAY, CLASSIFIER),
    "OpenTelemetry traces (needs the `otel` extra): `off`, `otlp` (OTLP/HTTP; endpoint from "
    "`OTEL_EXPORTER_OTLP_ENDPOINT`), `console` (JSON spans in the log) or `file:PATH` (JSON "
    "lines); unset = `OTEL_TRACES_EXPORTER` (`otlp`, `console`, `none`) if the extra is "
    "installed, else off.  `OTEL_SDK_DISABLED=true` turns tracing off; `OTEL_SERVICE_NAME`, "
    "`OTEL_TRACES_SAMPLER` and `OTEL_BSP_*` are honoured",
    shown="`off`",
)

# Probes and scrapes, every few seconds from every kubelet and Prometheus: a trace each would
# bury the jobs' traces.
UNTRACED_PATHS: Final = frozenset({"/healthz", "/readyz", "/metrics"})
# Header names the W3C trace context uses, in HTTP and (shared/wire.py) in AMQP alike.
CONTEXT_HEADERS: Final = ("traceparent", "tracestate")
RABBITMQ: Final = {"messaging.system": "rabbitmq"}


@dataclass(frozen=True, slots=True)
class TracingSettings:
    exporter: Exporter = Exporter.OFF
    # The file of Exporter.FILE.
    path: str = ""
    # OTEL_SERVICE_NAME; empty = the service's own ("imgq-gateway", "imgq-classifier").
    service_name: str = ""

    @classmethod
    def from_env(cls, env: Environ) -> TracingSettings:
        if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
            return cls()
        raw = env.get(_TRACING.name, "").strip()
        explicit = bool(raw)
        if not explicit:
            # The standard variable, as every OpenTelemetry SDK reads it; but a deployment
            # that sets it for all its pods must not stop an image built without the extra.
            raw = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
            if raw in ("", "none") or not otel_installed():
                return cls()
        path = ""
        if raw.startswith("file:"):
            raw, path = "file", raw.removeprefix("file:").strip()
            if not path:
                raise SettingsError(f"{_TRACING.name}=file:PATH needs a path")
        try:
            exporter = Exporter(raw)
        except ValueError:
            where = _TRACING.name if explicit else "OTEL_TRACES_EXPORTER"
            raise SettingsError(
                f"{where} must be off, otlp, console or file:PATH; got {raw!r}"
            ) from None
        if exporter is not Exporter.OFF and not otel_installed():
            raise SettingsError(
                f"{_TRACING.name}={raw} needs OpenTelemetry: pip install 'imgq-services[otel]'"
            )
        return cls(exporter, path, env.get("OTEL_SERVICE_NAME", "").strip())


def otel_installed() -> bool:
    try:
        import opentelemetry.sdk.trace  # noqa: F401
    except ImportError:
        return False
    return True


# The tracer of this process while tracing is on (``started``); None = every hook is a no-op.
# Module state rather than a parameter: the hooks sit in modules that must read the same with
# tracing off, and OpenTelemetry's own API keeps its provider per process likewise.
_tracer: Tracer | None = None
_propagator: TraceContextTextMapPropagator | None = None


def active() -> bool:
    """Whether tracing is on in this process (between ``started``'s entry and exit)."""
    return _tracer is not None


@contextlib.contextmanager
def started(settings: TracingSettings, service: str) -> Iterator[None]:
    """Trace while inside; on the way out, export what is left (a service's ``main``)."""
    global _tracer, _propagator
    if settings.exporter is Exporter.OFF:
        yield
        return
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    # Batched, off the event loop (the exporter's own thread); OTEL_BSP_* tune it.
    provider = TracerProvider(
        resource=Resource.create({SERVICE_NAME: settings.service_name or service})
    )
    with contextlib.ExitStack() as resources:
        provider.add_span_processor(BatchSpanProcessor(_exporter(settings, resources)))
        _tracer = provider.get_tracer("imgq")
        _propagator = TraceContextTextMapPropagator()
        log.info("tracing on: %s", settings.exporter.value)
        try:
            yield
        finally:
            _tracer = None
            _propagator = None
            provider.shutdown()  # exports the spans still batched


def _exporter(settings: TracingSettings, resources: contextlib.ExitStack) -> Any:
    if settings.exporter is Exporter.OTLP:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter

    def one_line(span: Any) -> str:
        return str(span.to_json(indent=None)) + "\n"

    if settings.exporter is Exporter.FILE:
        out = resources.enter_context(open(settings.path, "a", encoding="utf-8"))  # noqa: SIM115
        return ConsoleSpanExporter(out=out, formatter=one_line)
    return ConsoleSpanExporter(formatter=one_line)


def _context(headers: Mapping[str, str]) -> Any:
    """The remote parent carried by ``headers``; an empty context (a new trace) if none."""
    assert _propagator is not None
    return _propagator.extract({k: headers[k] for k in CONTEXT_HEADERS if headers.get(k)})


def outgoing_headers() -> dict[str, str]:
    """The current span's ``traceparent``/``tracestate``, for a message being built."""
    if _propagator is None:
        return {}
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return carrier


# -- gateway -------------------------------------------------------------------------------


class ServerSpan:
    """One HTTP request's server span, told how the request ended (``answered``)."""

    def __init__(self, span: Span | None = None) -> None:
        self._span = span

    def answered(self, status: int | None, error: BaseException | None = None) -> None:
        """``status`` as sent (None: the client went away, so none was), and an unexpected
        error, if any, which the span records."""
        span = self._span
        if span is None:
            return
        from opentelemetry.trace import StatusCode

        if error is not None:
            span.record_exception(error)
        if status is not None:
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                span.set_status(StatusCode.ERROR)


@contextlib.contextmanager
def server_span(
    method: str, route: str, path: str, scheme: str, headers: Mapping[str, str]
) -> Iterator[ServerSpan]:
    """The current span while an HTTP request is handled (the gateway's middleware wraps each
    request in it): a child of the client's ``traceparent`` when it sent one.  ``route`` is
    the matched pattern (empty when none matched).  A no-op while tracing is off and for
    probes and scrapes."""
    tracer = _tracer
    if tracer is None or path in UNTRACED_PATHS:
        yield ServerSpan()
        return
    from opentelemetry.trace import SpanKind

    attributes = {
        "http.request.method": method,
        "url.path": path,
        "url.scheme": scheme,
        **({"http.route": route} if route else {}),
    }
    with tracer.start_as_current_span(
        f"{method} {route}".strip(),
        context=_context(headers),
        kind=SpanKind.SERVER,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        yield ServerSpan(span)


def publishing(request: ClassifyRequest) -> contextlib.AbstractContextManager[object]:
    """Around publishing a job: the producer span whose context the request message carries."""
    if _tracer is None:
        return contextlib.nullcontext()
    from opentelemetry.trace import SpanKind

    return _tracer.start_as_current_span(
        f"publish {REQUESTS_QUEUE}",
        kind=SpanKind.PRODUCER,
        attributes={
            **_job(request.job_id, request.model),
            **RABBITMQ,
            "messaging.operation.type": "send",
            "messaging.destination.name": REQUESTS_QUEUE,
            "messaging.message.id": request.job_id,
        },
    )


def applying(
    event: JobEvent, headers: Mapping[str, str], *, live: bool
) -> contextlib.AbstractContextManager[object]:
    """Around a gateway applying a job's final event from the log, when it carries a trace.
    Not while replaying the log (``live`` false): those jobs' traces ended long ago."""
    if _tracer is None or not live or not event.status.is_final or not headers:
        return contextlib.nullcontext()
    from opentelemetry.trace import SpanKind

    return _tracer.start_as_current_span(
        "apply result",
        context=_context(headers),
        kind=SpanKind.CONSUMER,
        attributes={
            **_job(event.job_id, event.model),
            **RABBITMQ,
            "messaging.operation.type": "process",
            "imgq.status": event.status.value,
        },
    )


# -- replica -------------------------------------------------------------------------------


class BatchTrace:
    """The spans of one batch's jobs in a replica; with tracing off, it holds none and every
    method does nothing.  ``end`` (or leaving it, as a context manager) ends the jobs' spans:
    a replica does so once the batch is acked, in the background, while the next one runs."""

    def __init__(
        self, replica: str, jobs: Sequence[tuple[ClassifyRequest, Mapping[str, str]]]
    ) -> None:
        # In the batch's order (a job delivered twice may be in it twice), and by job ID.
        self._process: list[Span] = []
        self._by_job: dict[str, Span] = {}
        self._published: list[Span] = []
        if _tracer is None:
            return
        from opentelemetry.trace import SpanKind, set_span_in_context

        taken = time.time_ns()
        for request, headers in jobs:
            process = _tracer.start_span(
                "process job",
                context=_context(headers),
                kind=SpanKind.CONSUMER,
                start_time=taken,
                attributes={
                    **_job(request.job_id, request.model),
                    **RABBITMQ,
                    "messaging.operation.type": "process",
                    "messaging.destination.name": REQUESTS_QUEUE,
                    "messaging.message.id": request.job_id,
                    "imgq.replica": replica,
                    "imgq.queue_wait_s": max(0.0, taken / 1e9 - request.queued_at),
                },
            )
            # Another host's clock may run ahead of ours: a wait is never negative.
            queued = min(round(request.queued_at * 1e9), taken)
            _tracer.start_span(
                "queue wait", context=set_span_in_context(process), start_time=queued
            ).end(end_time=taken)
            self._process.append(process)
            self._by_job[request.job_id] = process

    def inference(self, started_at: float, finished_at: float, outcomes: Sequence[object]) -> None:
        """Record the batch's inference (Unix times) on each job; failed jobs' spans say why."""
        if _tracer is None or not self._process:
            return
        from opentelemetry.trace import StatusCode, set_span_in_context

        for process, outcome in zip(self._process, outcomes, strict=True):
            span = _tracer.start_span(
                "inference",
                context=set_span_in_context(process),
                start_time=round(started_at * 1e9),
                attributes={"imgq.batch_size": len(self._process)},
            )
            if isinstance(outcome, ImgqError):
                span.set_attribute("imgq.error", outcome.code)
                span.set_status(StatusCode.ERROR, outcome.message)
                process.set_status(StatusCode.ERROR, outcome.message)
            span.end(end_time=round(finished_at * 1e9))

    def publishing(self, final: JobEvent) -> contextlib.AbstractContextManager[object]:
        """Around sending a job's final event: the span its context goes out with.  The span
        lasts until the batch is confirmed and acked (the end of this ``BatchTrace``)."""
        process = self._by_job.get(final.job_id)
        if _tracer is None or process is None:
            return contextlib.nullcontext()
        from opentelemetry.trace import SpanKind, set_span_in_context, use_span

        span = _tracer.start_span(
            "publish result",
            context=set_span_in_context(process),
            kind=SpanKind.PRODUCER,
            attributes={
                **RABBITMQ,
                "messaging.operation.type": "send",
                "imgq.status": final.status.value,
            },
        )
        self._published.append(span)
        return use_span(span, end_on_exit=False)

    def __enter__(self) -> BatchTrace:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.end(error)

    def end(self, error: BaseException | None = None) -> None:
        """End the jobs' spans (once their batch is acked, or given back with ``error``)."""
        spans, self._process, self._published = (*self._published, *self._process), [], []
        if not spans:
            return
        from opentelemetry.trace import StatusCode

        for span in spans:
            if error is not None:
                span.record_exception(error)
                span.set_status(StatusCode.ERROR, repr(error))
            span.end()


def _job(job_id: str, model: str) -> dict[str, str]:
    return {"imgq.job_id": job_id, "imgq.model": model}
