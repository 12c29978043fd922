"""Message schemas on the broker: one definition for both services.

Schema version 2: a ``ClassifyRequest`` travels as the raw image bytes in the AMQP body
with its metadata in message properties and headers (``shared/wire.py`` builds and parses
every broker message); every other message body is a JSON object with ``"v"``: one
``JobEvent``, or an ``EventBatch`` of several (how replicas and the gateways' "queued"
events go out, so that the broker and every gateway handle one message for many events).
Parsing is strict and raises ``MessageError`` with what was wrong, so a consumer can
dead-letter a bad message instead of crashing on it.

A ``JobEvent`` is a full snapshot of the job at the moment it changed state, not
a delta: whoever sees only the last event of a job (a gateway that started late)
still has everything it needs to answer for it.
"""

from __future__ import annotations

import hashlib
import math
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

import orjson

from shared.errors import MessageError
from shared.states import JobStatus

# The one schema version read and written.  (Version 1, JSON requests with the image in
# base64, was dropped before the first release.)
SCHEMA_VERSION = 2
JSON = "application/json"
_JOB_ID = re.compile(r"^[0-9a-f]{32}$")
_BATCH_REF = re.compile(r"([0-9a-f]{32})/([0-9]{1,6})/([0-9]{1,6})")
# Names are shown on pages and kept per job: long enough for any real file name or model
# name, short enough that a producer cannot make every job's record large.
MAX_NAME_CHARS = 200
# A callback URL: as long as the URLs browsers and servers commonly accept, so that any real
# receiver's address fits, while it travels in every event of its job.
MAX_CALLBACK_CHARS = 2048


def new_job_id() -> str:
    """122 random bits: unguessable, so a job ID is also the capability to read its result."""
    return uuid.uuid4().hex


def is_job_id(value: object) -> bool:
    return isinstance(value, str) and _JOB_ID.fullmatch(value) is not None


def _load(body: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MessageError(f"body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise MessageError("body must be a JSON object")
    version = data.get("v")
    # The type first (an int, not a bool): an unhashable value (a list, an object) cannot even
    # be looked up in the set.
    if type(version) is not int or version != SCHEMA_VERSION:
        raise MessageError(f"unsupported schema version {version!r}; expected {SCHEMA_VERSION}")
    return data


def _str(data: dict[str, Any], key: str) -> str:
    return checked_name(data.get(key), key)


def checked_name(value: object, key: str) -> str:
    """A non-empty name of at most ``MAX_NAME_CHARS`` characters (model, image, replica)."""
    if not isinstance(value, str) or not value:
        raise MessageError(f"{key!r} must be a non-empty string")
    if len(value) > MAX_NAME_CHARS:
        raise MessageError(f"{key!r} has {len(value)} characters; at most {MAX_NAME_CHARS}")
    return value


def checked_job_id(value: object) -> str:
    if not is_job_id(value):
        raise MessageError("the job ID must be 32 lowercase hex characters")
    assert isinstance(value, str)
    return value


def _opt_float(data: dict[str, Any], key: str) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MessageError(f"{key!r} must be a number or null")
    return finite(value, key)


def finite(value: int | float, key: str) -> float:
    """``value`` as a float, refusing what has none (an integer past 1e308) or is no time or
    count at all (NaN, the infinities)."""
    try:
        number = float(value)
    except OverflowError:
        raise MessageError(f"{key!r} is too large") from None
    if not math.isfinite(number):
        raise MessageError(f"{key!r} must be a finite number")
    return number


def _str_unbounded(data: dict[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise MessageError(f"{key!r} must be a non-empty string")
    return value


def _opt_name(data: dict[str, Any], key: str) -> str | None:
    """A name (``checked_name``) or null."""
    value = data.get(key)
    return None if value is None else checked_name(value, key)


def _opt_str(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise MessageError(f"{key!r} must be a string or null")
    return value


def _opt_callback(data: dict[str, Any], key: str = "callback") -> str | None:
    value = _opt_str(data, key)
    if value is not None and not 0 < len(value) <= MAX_CALLBACK_CHARS:
        raise MessageError(f"{key!r} must be a URL of 1 to {MAX_CALLBACK_CHARS} characters")
    return value


def _job_id(data: dict[str, Any]) -> str:
    job_id = data.get("job_id")
    if not is_job_id(job_id):
        raise MessageError("'job_id' must be 32 lowercase hex characters")
    return str(job_id)


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """What a request says about its job: everything but the image.  It is all a reader of a
    dead-lettered request needs, and all it reads (the image may be anything a producer sent).
    ``shared.wire`` reads it from a message's properties and headers."""

    job_id: str
    model: str
    image_name: str
    queued_at: float
    # Travels with the job, so every event a replica publishes carries it and any gateway
    # can honour the key from the log alone, whatever order the events arrive in.
    idempotency_key: str | None = None
    # Who submitted it, on a gateway with tokens: a hash of the token, so every gateway can
    # show the job, its idempotency key and its result only to the same client.
    owner: str | None = None
    # Set for a job submitted in a batch (POST /batches).
    batch: BatchRef | None = None
    # The broker user that published the request: its ``user_id``, which RabbitMQ refuses
    # unless it is the publishing connection's own user (a gateway sets its own); None when
    # the request named none (then RabbitMQ checked nothing).  Carried into every event of
    # the job, so a gateway believes the owner, batch and idempotency key above only when a
    # gateway sent the request (gateway/senders.py).
    requested_by: str | None = None
    # The URL the gateways POST the job to once it is final (for a job of a batch: the batch,
    # once all its jobs are), as the client named it (gateway/callbacks.py checked it).
    # Carried into every event of the job; like the owner, batch and idempotency key, a
    # gateway believes it only from a gateway's request (gateway/webhooks.py).
    callback: str | None = None


@dataclass(frozen=True, slots=True)
class ClassifyRequest(RequestInfo):
    """Classify ``image`` (encoded bytes: JPEG, PNG, ...) with ``model``: a ``RequestInfo``
    and the image.

    The image travels inside the message, so replicas need no shared filesystem
    and a program can submit straight to the broker.  ``shared.wire`` puts it on the wire.
    """

    image: bytes = field(kw_only=True, repr=False)
    # Hashed once: a submission needs it for idempotency, reuse and its events, and an
    # upload can be 10 MiB.  Pass it when known (gallery images are hashed at start-up).
    image_sha256: str = field(default="", repr=False, compare=False, kw_only=True)

    def __post_init__(self) -> None:
        if not self.image_sha256:
            object.__setattr__(self, "image_sha256", hashlib.sha256(self.image).hexdigest())

    @classmethod
    def of(cls, info: RequestInfo, image: bytes) -> ClassifyRequest:
        """The request ``info`` describes, with its image."""
        return cls(**{f.name: getattr(info, f.name) for f in fields(RequestInfo)}, image=image)


@dataclass(frozen=True, slots=True)
class Label:
    label: str
    class_index: int
    score: float

    def to_dict(self) -> dict[str, Any]:
        """As JSON has it, on the broker and in the HTTP API alike."""
        return {"label": self.label, "class_index": self.class_index, "score": self.score}


@dataclass(frozen=True, slots=True)
class BatchRef:
    """A job's place in the batch that submitted it: the batch's ID, the job's index in it and
    the batch's size.  Carried by the request and every event of the job, so any gateway can
    answer for the batch from the event log, not only the one that accepted it.  On the wire
    one string, ``<batch id>/<index>/<size>``."""

    batch_id: str
    index: int
    size: int

    def __str__(self) -> str:
        return f"{self.batch_id}/{self.index}/{self.size}"

    @classmethod
    def parse(cls, raw: object) -> BatchRef | None:
        if raw is None:
            return None
        # ASCII digits only: str.isdigit() also passes superscripts and other scripts' digits,
        # some of which int() then refuses.
        match = _BATCH_REF.fullmatch(raw) if isinstance(raw, str) else None
        if match is None or not int(match[2]) < int(match[3]):
            raise MessageError(f"'batch' must be '<32 hex>/<index>/<size>', got {raw!r:.100}")
        return cls(match[1], int(match[2]), int(match[3]))


@dataclass(frozen=True, slots=True)
class JobFailure:
    code: str
    message: str

    def to_dict(self) -> dict[str, str]:
        """As JSON has it, on the broker and in the HTTP API alike."""
        return {"code": self.code, "message": self.message}


@dataclass(frozen=True, slots=True)
class JobEvent:
    job_id: str
    status: JobStatus
    model: str
    image: str
    queued_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    replica: str | None = None
    result: tuple[Label, ...] | None = None
    error: JobFailure | None = None
    # Travel on the broker but are not shown over HTTP: they let every gateway rebuild the
    # idempotency and result-reuse indexes from the event log alone.
    image_sha256: str | None = None
    idempotency_key: str | None = None
    # Set when the result was copied from an earlier job on the same model and image bytes.
    reused_from: str | None = None
    # Broker-only too: a hash of the submitting client's token (None on an open gateway).
    owner: str | None = None
    # Broker-only: the batch the job was submitted in, if any.
    batch: BatchRef | None = None
    # Broker-only: who published the job's request (``ClassifyRequest.requested_by``), "" when
    # it named nobody; None only in an event written before the field existed.
    requested_by: str | None = None
    # The version of the model that ran the job (``model`` may name no version, or be served
    # in two versions during a rollout): set by the replica that takes it, None before.
    model_version: str | None = None
    # Broker-only: the request's callback URL (``ClassifyRequest.callback``).
    callback: str | None = None

    @classmethod
    def for_request(cls, request: RequestInfo, status: JobStatus) -> JobEvent:
        """The job's event with what its request says: everything but the image, whose hash
        only a request with its image (``ClassifyRequest``) has."""
        return cls(
            job_id=request.job_id,
            status=status,
            model=request.model,
            image=request.image_name,
            queued_at=request.queued_at,
            image_sha256=request.image_sha256 if isinstance(request, ClassifyRequest) else None,
            idempotency_key=request.idempotency_key,
            owner=request.owner,
            batch=request.batch,
            requested_by=request.requested_by or "",
            callback=request.callback,
        )

    def advance(self, status: JobStatus, **changes: Any) -> JobEvent:
        return replace(self, status=status, **changes)

    def to_broker_dict(self) -> dict[str, Any]:
        """The event on the broker (the event log, ``job.*`` and a producer's reply), "v" and
        all, as a JSON object.  The HTTP API's view of a job is the gateway's own
        (``gateway/answers.py``)."""
        return {
            "v": SCHEMA_VERSION,
            "job_id": self.job_id,
            "status": self.status.value,
            "model": self.model,
            "model_version": self.model_version,
            "image": self.image,
            "result": None if self.result is None else [x.to_dict() for x in self.result],
            "error": None if self.error is None else self.error.to_dict(),
            "queued_at": self.queued_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "replica": self.replica,
            "reused_from": self.reused_from,
            "image_sha256": self.image_sha256,
            "idempotency_key": self.idempotency_key,
            "owner": self.owner,
            "batch": None if self.batch is None else str(self.batch),
            "requested_by": self.requested_by,
            "callback": self.callback,
        }

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_broker_dict())

    @classmethod
    def from_json(cls, body: bytes) -> JobEvent:
        return cls.from_broker_dict(_load(body))

    @classmethod
    def from_broker_dict(cls, data: dict[str, Any]) -> JobEvent:
        """The event a JSON object describes (``to_broker_dict``'s shape); ``MessageError``
        says what is wrong with it."""
        try:
            status = JobStatus(str(data.get("status")))
        except ValueError:
            raise MessageError(f"unknown status {data.get('status')!r}") from None
        result = data.get("result")
        error = data.get("error")
        replica = data.get("replica")
        try:
            labels = (
                None
                if result is None
                else tuple(
                    Label(str(x["label"]), int(x["class_index"]), float(x["score"])) for x in result
                )
            )
            failure = (
                None if error is None else JobFailure(str(error["code"]), str(error["message"]))
            )
        except (TypeError, KeyError, ValueError, OverflowError) as exc:
            raise MessageError(f"malformed result or error: {exc!r:.200}") from None
        return cls(
            job_id=_job_id(data),
            status=status,
            model=_str(data, "model"),
            image=_str(data, "image"),
            queued_at=_opt_float(data, "queued_at"),
            started_at=_opt_float(data, "started_at"),
            finished_at=_opt_float(data, "finished_at"),
            replica=replica if isinstance(replica, str) else None,
            result=labels,
            error=failure,
            image_sha256=_opt_str(data, "image_sha256"),
            idempotency_key=_opt_str(data, "idempotency_key"),
            reused_from=_opt_str(data, "reused_from"),
            owner=_opt_str(data, "owner"),
            batch=BatchRef.parse(data.get("batch")),
            requested_by=_opt_str(data, "requested_by"),
            model_version=_opt_name(data, "model_version"),
            callback=_opt_callback(data),
        )


# The most events one EventBatch carries: a replica's batch of results and the next batch's
# "started" (IMGQ_BATCH_SIZE twice), or a gateway's queued events of one moment.  Bounded so
# that one message from the log is bounded work, and far above what either sends.
MAX_BATCH_EVENTS = 1000
# The trace context an event of a batch may carry, per event (W3C names, as in HTTP).
_TRACE_KEYS = ("traceparent", "tracestate")


@dataclass(frozen=True, slots=True)
class EventBatch:
    """Several job events, of one or many jobs, in one broker message, in the order they
    happened: a replica's results of one batch with the "started" of its next, a gateway's
    "queued" events of the jobs the broker confirmed meanwhile.  Each event is the same full
    snapshot a message of its own would carry; one message costs the broker and every reader
    of the log about what one event did, so a batch of them costs a fraction per event.

    ``traces`` gives, per event, the W3C trace context it goes out with (``traceparent``,
    ``tracestate``; empty for none): a message's own headers can name only one.  ``skipped``
    says, for a batch read back, why any entry was left out: one bad entry costs only itself.
    """

    events: tuple[JobEvent, ...]
    traces: tuple[Mapping[str, str], ...] = ()
    skipped: tuple[str, ...] = ()

    def to_json(self) -> bytes:
        traces = self.traces or ({},) * len(self.events)
        return orjson.dumps(
            {
                "v": SCHEMA_VERSION,
                # Each event exactly as a message of its own would carry it ("v" and all),
                # and the trace context it goes out with.
                "events": [
                    {**event.to_broker_dict(), **trace}
                    for event, trace in zip(self.events, traces, strict=True)
                ],
            }
        )

    @classmethod
    def from_json(cls, body: bytes) -> EventBatch:
        data = _load(body)
        entries = data.get("events")
        if not isinstance(entries, list) or not 0 < len(entries) <= MAX_BATCH_EVENTS:
            raise MessageError(f"'events' must be a list of 1 to {MAX_BATCH_EVENTS} events")
        events: list[JobEvent] = []
        traces: list[Mapping[str, str]] = []
        skipped: list[str] = []
        for index, entry in enumerate(entries):
            try:
                if not isinstance(entry, dict):
                    raise MessageError("an event must be a JSON object")
                events.append(JobEvent.from_broker_dict(entry))
            except MessageError as exc:
                skipped.append(f"event {index}: {exc.message}")
                continue
            traces.append({k: v for k in _TRACE_KEYS if isinstance(v := entry.get(k), str)})
        return cls(tuple(events), tuple(traces), tuple(skipped))


@dataclass(frozen=True, slots=True)
class JobForgotten:
    """A client deleted a finished job: every gateway drops its result (and answers 410)."""

    job_id: str
    at: float

    def to_json(self) -> bytes:
        return orjson.dumps({"v": SCHEMA_VERSION, "job_id": self.job_id, "at": self.at})

    @classmethod
    def from_json(cls, body: bytes) -> JobForgotten:
        data = _load(body)
        at = _opt_float(data, "at")
        if at is None:
            raise MessageError("'at' must be a number")
        return cls(job_id=_job_id(data), at=at)


# The most jobs a batch record lists: the most images one POST /batches may ever take
# (IMGQ_BATCH_MAX_IMAGES is bounded by it), so a record read from the log is bounded too.
MAX_BATCH_JOBS = 10_000


@dataclass(frozen=True, slots=True)
class BatchRecord:
    """A batch's members by index, published by the gateway that accepted it when its jobs'
    own events cannot describe it: a member that is an earlier job (an idempotency key
    replayed) names the batch it was first submitted in, not this one.  Any gateway then
    answers for the batch from this record."""

    batch_id: str
    model: str
    job_ids: tuple[str, ...]
    owner: str | None
    created_at: float

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "v": SCHEMA_VERSION,
                "batch_id": self.batch_id,
                "model": self.model,
                "job_ids": list(self.job_ids),
                "owner": self.owner,
                "created_at": self.created_at,
            }
        )

    @classmethod
    def from_json(cls, body: bytes) -> BatchRecord:
        data = _load(body)
        job_ids = data.get("job_ids")
        if (
            not isinstance(job_ids, list)
            or not 0 < len(job_ids) <= MAX_BATCH_JOBS
            or not all(is_job_id(job_id) for job_id in job_ids)
        ):
            raise MessageError(
                f"'job_ids' must be a list of 1 to {MAX_BATCH_JOBS} job IDs (32 lowercase hex)"
            )
        batch_id = data.get("batch_id")
        if not isinstance(batch_id, str) or not is_job_id(batch_id):
            raise MessageError("'batch_id' must be 32 lowercase hex characters")
        created_at = _opt_float(data, "created_at")
        if created_at is None:
            raise MessageError("'created_at' must be a number")
        return cls(
            batch_id=batch_id,
            model=_str(data, "model"),
            job_ids=tuple(job_ids),
            owner=_opt_str(data, "owner"),
            created_at=created_at,
        )


@dataclass(frozen=True, slots=True)
class WebhookDelivery:
    """A callback that failed and waits for its next attempt (``gateway/webhooks.py``): all an
    attempt needs, so that whichever gateway takes it makes it, and every attempt of one
    delivery sends the same body under the same ID.  Only gateways publish it."""

    # What the receiver deduplicates on: the same for every attempt, and for every gateway.
    delivery_id: str
    url: str
    # The ``type`` of the body: ``job.succeeded``, ``job.failed``, ``job.cancelled`` or
    # ``batch.done``.
    event: str
    # The JSON document POSTed, exactly as the first attempt sent it.
    body: bytes
    # Whose secret signs it: the submitting client's token hash (None on an open gateway).
    owner: str | None
    # For log lines: the job, or for a batch the job whose end completed it, and its model.
    job_id: str
    model: str
    batch_id: str | None
    # The attempt this message is for: 2 for the first retry.
    attempt: int
    first_attempt_at: float

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "v": SCHEMA_VERSION,
                "delivery_id": self.delivery_id,
                "url": self.url,
                "event": self.event,
                "body": self.body.decode(),
                "owner": self.owner,
                "job_id": self.job_id,
                "model": self.model,
                "batch_id": self.batch_id,
                "attempt": self.attempt,
                "first_attempt_at": self.first_attempt_at,
            }
        )

    @classmethod
    def from_json(cls, body: bytes) -> WebhookDelivery:
        data = _load(body)
        attempt = data.get("attempt")
        if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
            raise MessageError("'attempt' must be a positive integer")
        first = _opt_float(data, "first_attempt_at")
        if first is None:
            raise MessageError("'first_attempt_at' must be a number")
        batch_id = _opt_str(data, "batch_id")
        if batch_id is not None and not is_job_id(batch_id):
            raise MessageError("'batch_id' must be 32 lowercase hex characters or null")
        url = _opt_callback(data, "url")
        if url is None:
            raise MessageError("'url' must be a URL")
        return cls(
            delivery_id=_str(data, "delivery_id"),
            url=url,
            event=_str(data, "event"),
            body=_str_unbounded(data, "body").encode(),
            owner=_opt_str(data, "owner"),
            job_id=_job_id(data),
            model=_str(data, "model"),
            batch_id=batch_id,
            attempt=attempt,
            first_attempt_at=first,
        )


@dataclass(frozen=True, slots=True)
class AnnouncedModel:
    """What a replica tells the gateways about a model version it serves, so they can offer it.

    ``ReplicaHeartbeat.model_info`` is keyed by ``name@version``.  Heartbeats of replicas that
    predate the model repository carry only title and input size, keyed by a bare name: they
    read as that name's default version ``1`` of 1000 classes (all they could serve then).
    """

    title: str
    input_size: int
    name: str = ""
    version: str = "1"
    # Whether ``name`` alone means this version (on this replica).
    default: bool = True
    classes: int = 1000
    # The arithmetic the replica runs it in: "fp32", or "bf16" where the model asked for it
    # and the replica's CPU has bfloat16 instructions.  Older replicas send none: fp32.
    precision: str = "fp32"


@dataclass(frozen=True, slots=True)
class ReplicaHeartbeat:
    """Published by each replica every few seconds: who is online, serving what."""

    replica: str
    models: tuple[str, ...]
    jobs_done: int
    busy: bool
    interval: float
    at: float
    # Per served model, what a gateway needs to offer it without knowing it beforehand (the
    # torchvision models a replica found weights for).  Older replicas send none.
    model_info: dict[str, AnnouncedModel] = field(default_factory=dict)
    # How often a supervisor (the local launcher) restarted this replica; 0 elsewhere.
    restarts: int = 0
    # Holding work and making no progress for longer than its IMGQ_STALL_TIMEOUT: alive (its
    # loop sends this) but stuck, and reported unhealthy until it moves again or is restarted.
    stalled: bool = False

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "v": SCHEMA_VERSION,
                "replica": self.replica,
                "models": list(self.models),
                "jobs_done": self.jobs_done,
                "busy": self.busy,
                "interval": self.interval,
                "at": self.at,
                "model_info": {
                    key: {
                        "title": info.title,
                        "input_size": info.input_size,
                        "name": info.name,
                        "version": info.version,
                        "default": info.default,
                        "classes": info.classes,
                        "precision": info.precision,
                    }
                    for key, info in self.model_info.items()
                },
                "restarts": self.restarts,
                "stalled": self.stalled,
            }
        )

    @classmethod
    def from_json(cls, body: bytes) -> ReplicaHeartbeat:
        data = _load(body)
        models = data.get("models")
        if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
            raise MessageError("'models' must be a list of strings")
        interval = _opt_float(data, "interval")
        at = _opt_float(data, "at")
        jobs_done = data.get("jobs_done")
        if interval is None or at is None or not isinstance(jobs_done, int):
            raise MessageError("'interval', 'at' and 'jobs_done' are required numbers")
        stalled = data.get("stalled", False)  # older replicas do not say
        if not isinstance(stalled, bool):
            raise MessageError("'stalled' must be true or false")
        return cls(
            replica=_str(data, "replica"),
            models=tuple(models),
            jobs_done=jobs_done,
            busy=bool(data.get("busy")),
            interval=interval,
            at=at,
            model_info=_model_info(data.get("model_info")),
            restarts=_count(data.get("restarts")),
            stalled=stalled,
        )


@dataclass(frozen=True, slots=True)
class CrashReport:
    """A replica that died holding jobs says so when it starts again (from its journal,
    ``classifier_service/journal.py``): each of these jobs was running when that replica's
    process ended without settling it.  Every replica counts the reports per job, and a job
    reported ``CRASH_LIMIT`` times is dead-lettered as poison (``shared/topology.py``).

    ``life`` names the process that died (a fresh random ID per start), so a report sent twice
    (its sender died again before clearing its journal) counts once.
    """

    replica: str
    life: str
    jobs: tuple[str, ...]
    at: float

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "v": SCHEMA_VERSION,
                "replica": self.replica,
                "life": self.life,
                "jobs": list(self.jobs),
                "at": self.at,
            }
        )

    @classmethod
    def from_json(cls, body: bytes) -> CrashReport:
        data = _load(body)
        jobs = data.get("jobs")
        if not isinstance(jobs, list) or not all(is_job_id(job) for job in jobs):
            raise MessageError("'jobs' must be a list of job IDs")
        at = _opt_float(data, "at")
        if at is None:
            raise MessageError("'at' must be a number")
        return cls(
            replica=_str(data, "replica"),
            life=_str(data, "life"),
            jobs=tuple(jobs),
            at=at,
        )


def _count(raw: object) -> int:
    if raw is None:
        return 0
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 0:
        raise MessageError("'restarts' must be a non-negative integer")
    return raw


def _model_info(raw: object) -> dict[str, AnnouncedModel]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise MessageError("'model_info' must be an object")
    info = {}
    for key, entry in raw.items():
        if not isinstance(entry, dict):
            raise MessageError(f"'model_info' entry {key!r} must be an object")
        title, size = entry.get("title"), entry.get("input_size")
        if not isinstance(title, str) or isinstance(size, bool) or not isinstance(size, int):
            raise MessageError(
                f"'model_info' entry {key!r} needs a string 'title' and an integer 'input_size'"
            )
        # An older replica's entry: keyed by the bare name, no more said.
        name, _, version = key.partition("@")
        name, version = entry.get("name", name), entry.get("version", version or "1")
        default, classes = entry.get("default", True), entry.get("classes", 1000)
        precision = entry.get("precision", "fp32")
        if not isinstance(name, str) or not isinstance(version, str):
            raise MessageError(f"'model_info' entry {key!r}: 'name' and 'version' are strings")
        if not isinstance(default, bool):
            raise MessageError(f"'model_info' entry {key!r}: 'default' is true or false")
        if isinstance(classes, bool) or not isinstance(classes, int) or classes < 1:
            raise MessageError(f"'model_info' entry {key!r}: 'classes' is a positive integer")
        if not isinstance(precision, str) or not precision:
            raise MessageError(f"'model_info' entry {key!r}: 'precision' is a non-empty string")
        info[key] = AnnouncedModel(title, size, name, version, default, classes, precision)
    return info
