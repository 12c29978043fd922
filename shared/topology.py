"""Broker topology: every exchange, queue, routing key and argument, declared in one place.

Both services declare the whole topology at start-up (declaration is idempotent),
so either may start first.  Queue arguments are part of the contract: RabbitMQ
refuses a redeclaration whose arguments differ (PRECONDITION_FAILED).  The few
that an operator may tune (the work queue's bound, the event log's retention)
come from environment variables that every service of a deployment must share;
a mismatch stops the newcomer at start-up with the broker's error, never later.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue

from shared.errors import SettingsError
from shared.settings import (
    CLASSIFIER,
    GATEWAY,
    SETUP,
    Environ,
    broker_urls,
    env_int,
    env_list,
    variable,
)

# Producers (the gateway, or any program) publish requests here, all with one routing key.
REQUESTS_EXCHANGE: Final = "imgq.requests"
REQUEST_ROUTING_KEY: Final = "classify"
# ... from which the broker routes each request by its ``model`` header (a headers exchange,
# bound to the requests exchange) to that model's work queue: a replica consumes only the
# queues of the models it serves, each model's backlog is its own queue's depth (what an
# autoscaler reads), and a job for a model no replica serves right now waits in its queue.
MODEL_ROUTER: Final = "imgq.requests.by-model"
# One FIFO work queue per model ID (``name`` or ``name@version``), declared by whoever serves
# or offers the model: replicas for theirs, gateways for IMGQ_MODELS, the setup step.
MODEL_QUEUE_PREFIX: Final = "imgq.model."
# What the router cannot place (a v1 JSON request, whose model is inside the body; a model
# nobody has declared a queue for) goes through this fanout to the shared queue below, which
# every replica also reads: a replica that lacks the model fails the job (unknown model).
UNROUTED_EXCHANGE: Final = "imgq.requests.unrouted"
REQUESTS_QUEUE: Final = "imgq.requests"
# Requests that cannot be processed (not JSON, unknown model, delivered too often).
DEAD_LETTER_EXCHANGE: Final = "imgq.dead-letter"
DEAD_LETTER_QUEUE: Final = "imgq.requests.dead"  # kept for operators to inspect
# A second copy of each dead letter, consumed by gateways to mark the job failed.
DEAD_LETTER_NOTICES: Final = "imgq.requests.dead.notices"
# Dead letters carry their image (up to the upload limit), and nobody may be reading them:
# bounded in count and bytes, oldest dropped first, and gone after a week either way.
DEAD_LETTER_ARGUMENTS: Final[dict[str, aio_pika.abc.FieldValue]] = {
    "x-queue-type": "quorum",
    "x-max-length": 10_000,
    "x-max-length-bytes": 256 << 20,
    "x-overflow": "drop-head",
    "x-message-ttl": 7 * 24 * 3600 * 1000,
}
# Direct replies (a producer's reply_to) from a replica that may not publish to the default
# exchange: a producer binds its server-named reply queue here with the queue's own name as
# the routing key.  RabbitMQ checks a publish only against its exchange, and write on the
# default exchange is write into every queue by name (the work queues included), so
# least-privilege replicas reply here instead (compose/permissions.py).  Direct (exact keys,
# no wildcards): binding a queue with someone else's reply queue name is the only way to read
# their replies, and those names are the broker's random ones.
REPLIES_EXCHANGE: Final = "imgq.replies"
# Job events (queued, started, succeeded, failed, cancelled, forgotten) and replica
# heartbeats, topic-routed.
EVENTS_EXCHANGE: Final = "imgq.events"
HEARTBEAT_ROUTING_KEY: Final = "replica.heartbeat"
JOB_EVENTS_PATTERN: Final = "job.*"
CANCELLED_ROUTING_KEY: Final = "job.cancelled"
FORGOTTEN_ROUTING_KEY: Final = "job.forgotten"
# Several job events in one message (shared/messages.py, EventBatch): what replicas publish,
# and the gateways' "queued" events.  Under ``job.`` so that the event log's binding takes it
# in; not a status, so a queue bound to one status (the cancellations stream) never gets it.
EVENTS_ROUTING_KEY: Final = "job.events"
# A batch's members, when their own events cannot say (shared/messages.py, BatchRecord): not a
# job status, but under ``job.`` so that the event log's binding takes it in.
BATCH_ROUTING_KEY: Final = "job.batch"
# What every replica must know about a job before it runs it, as a small stream of its own
# that each replica replays when it starts and then follows: the job was cancelled while queued
# (skip it), or a replica died running it (see CRASH_LIMIT).  Named for the first of the two.
CANCELLATIONS: Final = "imgq.cancellations"
# A replica that died holding jobs reports them when it starts again (shared.messages.CrashReport).
# Not under job.*: the event log and the gateways have no use for it.
CRASHED_ROUTING_KEY: Final = "replica.crashed"
CANCELLATIONS_ARGUMENTS: Final[dict[str, aio_pika.abc.FieldValue]] = {
    "x-queue-type": "stream",
    # A cancellation matters only until its job leaves the queue.
    "x-max-age": "24h",
    "x-max-length-bytes": 64 << 20,
    "x-stream-max-segment-size-bytes": 1 << 20,
}
# The durable, replayable log of job events (a stream): any gateway rebuilds its results
# from it at start-up.  Gateways append a marker to learn when a replay has caught up.
EVENT_LOG: Final = "imgq.events.log"
MARKER_PATTERN: Final = "marker.*"

# Poison: a job that crashed replicas (killed the process running it, or stalled it until it
# was restarted) this many times is dead-lettered by the next replica it reaches, instead of
# taking the fleet down.  Only crashes count, never redeliveries caused by the infrastructure
# (a broker node restarting, a connection lost, a replica draining): those leave no crash.
#
# How crashes are counted: a replica journals the jobs it runs (classifier_service/journal.py:
# written before inference, cleared once they are settled) in a file that outlives its process
# (the launcher, compose and a Kubernetes container restart keep the same filesystem or
# emptyDir).  Started again after dying, it publishes the jobs it died holding as a CrashReport
# to the cancellations stream (CRASHED_ROUTING_KEY), which every replica follows and counts per
# job.  A redelivered job with a crash on record runs alone, in a batch of one, so that no
# innocent batch-mate is blamed with it; at CRASH_LIMIT it is not run again.  A job that merely
# runs too long fails by itself (IMGQ_JOB_TIME_LIMIT) and crashes nothing.
CRASH_LIMIT: Final = 3
# The quorum queues' own count (x-delivery-limit) counts every return of a message to its queue,
# however caused: three broker restarts under load were enough to dead-letter a healthy job at
# the limit of 3 this used to be.  It stays only as a far-off backstop, for poison whose crashes
# go unreported (a replica that never starts again on the same filesystem).  RabbitMQ refuses
# to redeclare a queue with another x-delivery-limit: see "Upgrading" in the README.
DELIVERY_LIMIT: Final = 20

# Callbacks (gateway/webhooks.py).  A job event that should be POSTed somewhere (a final event
# of a job with a callback) carries WEBHOOK_HEADER; the headers exchange below, bound to the
# events exchange, sends just those to the due queue.  The replica publishes each event once,
# as it always has, and the broker makes the copy.  Gateways consume the due queue as
# competing consumers: the broker gives each message to exactly one of them and, should that
# gateway die before it acks, to another.
WEBHOOKS_EXCHANGE: Final = "imgq.webhooks"
WEBHOOKS_QUEUE: Final = "imgq.webhooks.due"
WEBHOOK_HEADER: Final = "imgq-webhook"
WEBHOOK_DUE: Final = "due"
# A delivery whose attempt failed waits for the next one in a delay queue, published there
# through this direct exchange: one queue per delay, since a queue's messages expire in order
# only when they all live as long.  On expiry the broker dead-letters it to WEBHOOKS_EXCHANGE,
# headers and all, and so back to the due queue.  Nothing holds a message unacked while it
# waits, so no wait runs into RabbitMQ's consumer_timeout (30 minutes).
WEBHOOK_RETRY_EXCHANGE: Final = "imgq.webhooks.retry"
WEBHOOK_DELAY_PREFIX: Final = "imgq.webhooks.delay."
# A due delivery whose handling keeps ending with its gateway (killed mid-attempt, again and
# again) is dropped after this many deliveries rather than take every gateway down in turn.
# Never reached otherwise: a failed attempt is acked and re-published, not requeued.
WEBHOOK_DELIVERY_LIMIT: Final = 10
# Deliveries waiting in one delay queue: a retry past it is refused by the broker and the
# delivery given up, rather than let one unreachable receiver fill the broker's disk.
WEBHOOK_DELAY_MAX: Final = 100_000

# The tunable arguments below are part of each queue's declaration: every service that
# declares the topology (and the setup step) must be given the same values.
_QUEUE_REPLICAS: Final = variable(
    "IMGQ_QUEUE_REPLICAS",
    None,
    (GATEWAY, CLASSIFIER, SETUP),
    "copies of each queue and stream in a broker cluster (same value everywhere)",
    shown="one per broker URL",
)
_QUEUE_MAX_JOBS: Final = variable(
    "IMGQ_QUEUE_MAX_JOBS",
    10_000,
    (GATEWAY, CLASSIFIER, SETUP),
    "work queue bound in jobs: past it submissions get `503` (same value everywhere)",
)
_QUEUE_MAX_BYTES: Final = variable(
    "IMGQ_QUEUE_MAX_BYTES",
    1 << 30,
    (GATEWAY, CLASSIFIER, SETUP),
    "work queue bound in bytes; jobs carry their image (same value everywhere)",
    shown="`1073741824` (1 GiB)",
)
_LOG_MAX_AGE: Final = variable(
    "IMGQ_LOG_MAX_AGE",
    24 * 3600,
    (GATEWAY, SETUP),
    "seconds the event log keeps job events: what a starting gateway replays (same everywhere)",
    shown="`86400` (1 day)",
)
_LOG_MAX_BYTES: Final = variable(
    "IMGQ_LOG_MAX_BYTES",
    1 << 30,
    (GATEWAY, SETUP),
    "most bytes the event log keeps (same value everywhere)",
    shown="`1073741824` (1 GiB)",
)
_LOG_SEGMENT_BYTES: Final = variable(
    "IMGQ_LOG_SEGMENT_BYTES",
    16 << 20,
    (GATEWAY, SETUP),
    "event log segment size: retention drops whole segments (same value everywhere)",
    shown="`16777216` (16 MiB)",
)
_WEBHOOK_RETRY_DELAYS: Final = variable(
    "IMGQ_WEBHOOK_RETRY_DELAYS",
    ("10", "60", "600", "3600"),
    (GATEWAY, SETUP),
    "seconds before each retry of a callback that failed, comma-separated: one more attempt "
    "per delay, then it is given up; each delay is a queue (same value everywhere)",
)
_DECLARE_TOPOLOGY: Final = variable(
    "IMGQ_DECLARE_TOPOLOGY",
    "true",
    (GATEWAY, CLASSIFIER),
    "`false` for least-privilege broker users: only look the topology up",
)


@dataclass(frozen=True)
class Replication:
    """On how many nodes of a cluster each queue and stream keeps a copy.

    ``IMGQ_QUEUE_REPLICAS``, by default the number of broker nodes the service was given
    (``IMGQ_BROKER_URLS``): three nodes, three copies, so any one node can fail and the
    queues keep a majority.  On a single node nothing is added to the queues' arguments, so
    a deployment that grows into a cluster keeps its existing queues' declarations.
    """

    copies: int = 1

    @classmethod
    def from_env(cls, env: Environ) -> Replication:
        return cls(env_int(env, _QUEUE_REPLICAS.name, len(broker_urls(env)), minimum=1))

    def quorum(self) -> dict[str, aio_pika.abc.FieldValue]:
        return {} if self.copies == 1 else {"x-quorum-initial-group-size": self.copies}

    def stream(self) -> dict[str, aio_pika.abc.FieldValue]:
        return {} if self.copies == 1 else {"x-initial-cluster-size": self.copies}


@dataclass(frozen=True)
class QueueBounds:
    """The work queue's bound: past it the broker nacks publishes and the gateway answers
    503, rather than letting a backlog grow until the broker's memory alarm stops all."""

    max_jobs: int = _QUEUE_MAX_JOBS.default
    max_bytes: int = _QUEUE_MAX_BYTES.default  # jobs carry their image, so bound the bytes too
    replication: Replication = Replication()

    @classmethod
    def from_env(cls, env: Environ) -> QueueBounds:
        return cls(
            max_jobs=env_int(env, _QUEUE_MAX_JOBS.name, cls.max_jobs, minimum=1),
            max_bytes=env_int(env, _QUEUE_MAX_BYTES.name, cls.max_bytes, minimum=1024),
            replication=Replication.from_env(env),
        )

    def arguments(self) -> dict[str, aio_pika.abc.FieldValue]:
        return {
            # Quorum: replicated, durable, FIFO, and it counts deliveries (x-delivery-limit).
            "x-queue-type": "quorum",
            "x-delivery-limit": DELIVERY_LIMIT,
            "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
            # At-least-once dead-lettering needs reject-publish overflow; we want both anyway.
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
            "x-max-length": self.max_jobs,
            "x-max-length-bytes": self.max_bytes,
            **self.replication.quorum(),
        }


@dataclass(frozen=True)
class LogRetention:
    """How long and how much of the event log the broker keeps (whole segments at a time)."""

    max_age_seconds: int = _LOG_MAX_AGE.default
    max_bytes: int = _LOG_MAX_BYTES.default
    segment_bytes: int = _LOG_SEGMENT_BYTES.default
    replication: Replication = Replication()

    @classmethod
    def from_env(cls, env: Environ) -> LogRetention:
        return cls(
            max_age_seconds=env_int(env, _LOG_MAX_AGE.name, cls.max_age_seconds, minimum=1),
            max_bytes=env_int(env, _LOG_MAX_BYTES.name, cls.max_bytes, minimum=1024),
            segment_bytes=env_int(env, _LOG_SEGMENT_BYTES.name, cls.segment_bytes, minimum=1024),
            replication=Replication.from_env(env),
        )

    def arguments(self) -> dict[str, aio_pika.abc.FieldValue]:
        return {
            "x-queue-type": "stream",
            "x-max-age": f"{self.max_age_seconds}s",
            "x-max-length-bytes": self.max_bytes,
            # Retention drops whole segments: small segments keep disk use close to the bound.
            "x-stream-max-segment-size-bytes": self.segment_bytes,
            **self.replication.stream(),
        }


@dataclass(frozen=True)
class WebhookRetries:
    """When a callback that failed is tried again: after each of ``delays`` in turn, then never.

    The default, 10 s, 1 min, 10 min, 1 h, tries five times over about 71 minutes: a receiver
    that restarts is reached within seconds, one that is down for an hour still gets it.
    """

    delays: tuple[float, ...] = (10.0, 60.0, 600.0, 3600.0)
    replication: Replication = Replication()

    @classmethod
    def from_env(cls, env: Environ) -> WebhookRetries:
        name = _WEBHOOK_RETRY_DELAYS.name
        delays = []
        for item in env_list(env, name, _WEBHOOK_RETRY_DELAYS.default):
            try:
                delay = float(item)
            except ValueError:
                raise SettingsError(f"{name} must list numbers of seconds, got {item!r}") from None
            # A queue's TTL is whole milliseconds, and RabbitMQ takes at most 2^32 - 1 of them.
            if not 0.001 <= delay <= 7 * 24 * 3600:
                raise SettingsError(f"{name}: each delay is 0.001 s to a week, got {item!r}")
            delays.append(delay)
        return cls(tuple(delays), Replication.from_env(env))

    def delay_after(self, attempt: int) -> float | None:
        """How long to wait after attempt ``attempt`` (1: the first) failed; None: give up."""
        return self.delays[attempt - 1] if 1 <= attempt <= len(self.delays) else None

    @property
    def attempts(self) -> int:
        return len(self.delays) + 1

    def due_arguments(self) -> dict[str, aio_pika.abc.FieldValue]:
        return {
            "x-queue-type": "quorum",
            "x-delivery-limit": WEBHOOK_DELIVERY_LIMIT,
            **self.replication.quorum(),
        }

    def delay_arguments(self, delay: float) -> dict[str, aio_pika.abc.FieldValue]:
        return {
            # Quorum, like every queue that must survive a node: a waiting retry is a promise.
            "x-queue-type": "quorum",
            "x-message-ttl": _milliseconds(delay),
            "x-dead-letter-exchange": WEBHOOKS_EXCHANGE,
            # Expiry moves the delivery back to the due queue, confirmed by it, never lost on
            # the way; at-least-once dead-lettering needs reject-publish overflow.
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
            "x-max-length": WEBHOOK_DELAY_MAX,
            **self.replication.quorum(),
        }


def _milliseconds(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def webhook_delay_queue(delay: float) -> str:
    """The queue where a delivery waits ``delay`` seconds: named by its delay, so that a new
    schedule adds queues instead of clashing with the arguments of an old one."""
    return f"{WEBHOOK_DELAY_PREFIX}{_milliseconds(delay)}ms"


def webhook_binding() -> dict[str, aio_pika.abc.FieldValue]:
    """The binding that takes, of every job event, those carrying WEBHOOK_HEADER."""
    return {"x-match": "all", WEBHOOK_HEADER: WEBHOOK_DUE}


def model_queue(model: str) -> str:
    """The work queue of one model ID (``efficientnet_lite0``, ``mymodel@2``)."""
    return MODEL_QUEUE_PREFIX + model


def model_of_queue(queue: str) -> str | None:
    return queue.removeprefix(MODEL_QUEUE_PREFIX) if queue.startswith(MODEL_QUEUE_PREFIX) else None


def model_binding(model: str) -> dict[str, aio_pika.abc.FieldValue]:
    """The router binding that sends ``model``'s requests (header ``model``) to its queue."""
    return {"x-match": "all", "model": model}


def job_routing_key(status: str) -> str:
    return f"job.{status}"


def marker_routing_key(marker: str) -> str:
    return f"marker.{marker}"


@dataclass(frozen=True, slots=True)
class Topology:
    requests: AbstractExchange
    events: AbstractExchange
    # The shared queue of requests the router could not place (see UNROUTED_EXCHANGE).
    requests_queue: AbstractQueue
    router: AbstractExchange
    # Where a replica publishes direct replies, routing key = the request's reply_to: the
    # default exchange for a service that declares the topology (it may publish anywhere, and
    # so reaches reply queues that were never bound to imgq.replies), imgq.replies for a
    # least-privilege one (find_topology).
    replies: AbstractExchange
    # Where a replica republishes a request it dead-letters itself, with its reason.
    dead_letters: AbstractExchange


async def declare_topology(channel: AbstractChannel, bounds: QueueBounds) -> Topology:
    requests = await channel.declare_exchange(
        REQUESTS_EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True
    )
    unrouted = await channel.declare_exchange(
        UNROUTED_EXCHANGE, aio_pika.ExchangeType.FANOUT, durable=True
    )
    router = await channel.declare_exchange(
        MODEL_ROUTER,
        aio_pika.ExchangeType.HEADERS,
        durable=True,
        arguments={"alternate-exchange": UNROUTED_EXCHANGE},
    )
    await router.bind(requests, REQUEST_ROUTING_KEY)
    events = await channel.declare_exchange(
        EVENTS_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
    )
    await channel.declare_exchange(REPLIES_EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True)
    dead = await channel.declare_exchange(
        DEAD_LETTER_EXCHANGE, aio_pika.ExchangeType.FANOUT, durable=True
    )
    for name in (DEAD_LETTER_QUEUE, DEAD_LETTER_NOTICES):
        dead_queue = await channel.declare_queue(
            name,
            durable=True,
            arguments={**DEAD_LETTER_ARGUMENTS, **bounds.replication.quorum()},
        )
        await dead_queue.bind(dead)
    cancellations = await channel.declare_queue(
        CANCELLATIONS,
        durable=True,
        arguments={**CANCELLATIONS_ARGUMENTS, **bounds.replication.stream()},
    )
    await cancellations.bind(events, CANCELLED_ROUTING_KEY)
    await cancellations.bind(events, CRASHED_ROUTING_KEY)
    queue = await channel.declare_queue(REQUESTS_QUEUE, durable=True, arguments=bounds.arguments())
    await queue.bind(unrouted)
    # Before model queues, this queue was bound to the requests exchange directly; that binding
    # would now give it a second copy of every request.  Unbinding what is not bound is a no-op.
    await queue.unbind(requests, REQUEST_ROUTING_KEY)
    return Topology(
        requests=requests,
        events=events,
        requests_queue=queue,
        router=router,
        replies=channel.default_exchange,
        dead_letters=dead,
    )


async def declare_model_queue(
    channel: AbstractChannel, router: AbstractExchange, bounds: QueueBounds, model: str
) -> AbstractQueue:
    """``model``'s work queue, bound to the router; bounded and replicated like the rest."""
    queue = await channel.declare_queue(
        model_queue(model), durable=True, arguments=bounds.arguments()
    )
    await queue.bind(router, arguments=model_binding(model))
    return queue


async def declare_event_log(
    channel: AbstractChannel, events: AbstractExchange, retention: LogRetention
) -> AbstractQueue:
    log = await channel.declare_queue(EVENT_LOG, durable=True, arguments=retention.arguments())
    await log.bind(events, JOB_EVENTS_PATTERN)
    await log.bind(events, MARKER_PATTERN)
    return log


async def declare_webhooks(
    channel: AbstractChannel, events: AbstractExchange, retries: WebhookRetries
) -> None:
    """The callbacks' exchanges and queues: the due queue, fed from the events exchange, and
    a delay queue for each of ``retries``' delays, which hands its deliveries back."""
    hooks = await channel.declare_exchange(
        WEBHOOKS_EXCHANGE, aio_pika.ExchangeType.HEADERS, durable=True
    )
    await hooks.bind(events, JOB_EVENTS_PATTERN)
    due = await channel.declare_queue(
        WEBHOOKS_QUEUE, durable=True, arguments=retries.due_arguments()
    )
    await due.bind(hooks, arguments=webhook_binding())
    retry = await channel.declare_exchange(
        WEBHOOK_RETRY_EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True
    )
    for delay in dict.fromkeys(retries.delays):
        waiting = await channel.declare_queue(
            webhook_delay_queue(delay), durable=True, arguments=retries.delay_arguments(delay)
        )
        # Routed by its own name (aio-pika's default key): the name says the delay.
        await waiting.bind(retry)


async def find_topology(channel: AbstractChannel) -> Topology:
    """Look the topology up without declaring it (passive: needs no configure right).

    For services running as least-privilege users; the deployment's setup step declares it.
    Raises ``aio_pika.exceptions.ChannelNotFoundEntity`` while it does not exist yet.
    """
    return Topology(
        requests=await channel.get_exchange(REQUESTS_EXCHANGE),
        events=await channel.get_exchange(EVENTS_EXCHANGE),
        requests_queue=await channel.get_queue(REQUESTS_QUEUE),
        router=await channel.get_exchange(MODEL_ROUTER),
        replies=await channel.get_exchange(REPLIES_EXCHANGE),
        dead_letters=await channel.get_exchange(DEAD_LETTER_EXCHANGE),
    )


def declares_topology(env: Environ) -> bool:
    """IMGQ_DECLARE_TOPOLOGY=false: the service only looks the topology up (least privilege)."""
    raw = env.get(_DECLARE_TOPOLOGY.name, _DECLARE_TOPOLOGY.default).strip().lower()
    if raw not in ("true", "false", "1", "0", "yes", "no"):
        raise SettingsError(f"IMGQ_DECLARE_TOPOLOGY must be true or false, got {raw!r}")
    return raw in ("true", "1", "yes")
