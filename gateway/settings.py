"""The gateway's settings, read once from the environment."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from gateway.access_log import access_log_enabled
from gateway.batch_store import BatchLimits
from gateway.clients import ClientLimits
from gateway.event_loop import EventLoop, event_loop_from_env
from gateway.limits import MAX_REQUEST_BYTES
from gateway.process_count import processes_from_env
from gateway.senders import Senders
from gateway.webhook_settings import WebhookSettings
from shared.catalog import catalog_models
from shared.errors import SettingsError
from shared.logs import LogSettings
from shared.settings import (
    GATEWAY,
    Environ,
    Variable,
    broker_urls,
    env_float,
    env_int,
    env_list,
    env_str,
    variable,
)
from shared.topology import LogRetention, QueueBounds, declares_topology
from shared.tracing import TracingSettings

_REPO_IMAGES = Path(__file__).resolve().parent.parent / "images"

_HTTP_HOST = variable("IMGQ_HTTP_HOST", "127.0.0.1", GATEWAY, "address the HTTP server listens on")
_HTTP_PORT = variable("IMGQ_HTTP_PORT", 8080, GATEWAY, "port the HTTP server listens on")
_GALLERY_DIR = variable(
    "IMGQ_GALLERY_DIR",
    str(_REPO_IMAGES),
    GATEWAY,
    "folder of gallery images",
    shown="the repository's `images/`",
)
_MAX_WAIT = variable("IMGQ_MAX_WAIT", 30.0, GATEWAY, "longest long-poll (`?wait=`), seconds")
_PUBLISH_TIMEOUT = variable(
    "IMGQ_PUBLISH_TIMEOUT",
    5.0,
    GATEWAY,
    "seconds a submission waits for the broker's confirm before it gets `503`",
)
_JOB_TTL = variable(
    "IMGQ_JOB_TTL", 3600.0, GATEWAY, "seconds a finished job's result is kept (then `410`)"
)
_MAX_JOBS = variable(
    "IMGQ_MAX_JOBS", 100_000, GATEWAY, "most jobs kept; the oldest finished go first (then `410`)"
)
_BODY_BYTES = variable(
    "IMGQ_BODY_BYTES",
    256 * 1024 * 1024,
    GATEWAY,
    "request-body bytes the gateway holds at once, all clients together (then `503`); at "
    "least `IMGQ_CLIENT_BODY_BYTES`",
    shown="`268435456` (256 MiB)",
)
_BODY_TIMEOUT = variable(
    "IMGQ_BODY_TIMEOUT",
    120.0,
    GATEWAY,
    "seconds a submission's body may take to arrive (then `408`)",
)
_API_TOKENS: Variable[tuple[str, ...]] = variable(
    "IMGQ_API_TOKENS",
    (),
    GATEWAY,
    "bearer tokens for the JSON API, `/status` and `/metrics`, comma-separated; unset = open",
)


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    # Every node of the broker (one URL unless it is a cluster): any of them will do.
    broker_urls: tuple[str, ...]
    host: str
    port: int
    gallery_dir: Path
    models: tuple[str, ...]
    # Upper bound for ?wait=: long enough to save round trips, short enough that proxies
    # with a 60 s idle timeout never cut a long-poll.
    max_wait: float
    # How long a submission may wait for the broker's confirm before the client gets 503.
    publish_timeout: float
    # Finished jobs are kept this long, and at most this many jobs in all.
    job_ttl: float
    max_jobs: int
    queue_bounds: QueueBounds
    # False when running as a least-privilege broker user: look the topology up instead.
    declare_topology: bool
    log_retention: LogRetention
    # Bearer tokens for the JSON API; empty = the API is open.  Kept out of repr() so a
    # logged settings object never leaks them.
    api_tokens: tuple[str, ...] = field(default=(), repr=False)
    # Which broker users may publish which job events (gateway/senders.py); empty = any.
    senders: Senders = field(default_factory=Senders)
    # Each client's share: submissions a second, open long-polls and streams.
    client_limits: ClientLimits = field(default_factory=ClientLimits)
    # OpenTelemetry (shared/tracing.py): off unless asked for.
    tracing: TracingSettings = field(default_factory=TracingSettings)
    logs: LogSettings = field(default_factory=LogSettings)
    # A log line per HTTP request (gateway/access_log.py).
    access_log: bool = True
    # Images and bytes in one POST /batches.
    batch_limits: BatchLimits = field(default_factory=BatchLimits)
    # Request bodies in memory at once, all clients together (gateway/bodies.py): four of the
    # largest batches.  Held while they are read and checked, and once more in part while
    # their jobs are published, so the gateway stays well inside the 1 GiB its Kubernetes
    # manifest allows it.
    body_bytes: int = _BODY_BYTES.default
    # How long a body may take to arrive: a 64 MiB batch needs under a minute on a 10 Mbit/s
    # uplink; twice that, and a client that sends slowly or stops gives its share back.
    body_timeout: float = _BODY_TIMEOUT.default
    # Callbacks (gateway/webhooks.py): their secret, the networks they may reach, retries.
    webhooks: WebhookSettings = field(default_factory=WebhookSettings)
    # uvloop where installed (gateway/event_loop.py).
    event_loop: EventLoop = EventLoop.ASYNCIO
    # Gateway processes on the one port (gateway/processes.py).
    processes: int = 1

    @classmethod
    def from_env(cls, env: Environ) -> GatewaySettings:
        models = catalog_models(env)
        gallery = Path(env_str(env, _GALLERY_DIR.name, _GALLERY_DIR.default))
        if not gallery.is_dir():
            raise SettingsError(f"IMGQ_GALLERY_DIR {str(gallery)!r} is not a directory")
        port = env_int(env, _HTTP_PORT.name, _HTTP_PORT.default, maximum=65535)
        return cls(
            broker_urls=broker_urls(env),
            host=env_str(env, _HTTP_HOST.name, _HTTP_HOST.default),
            port=port,
            gallery_dir=gallery,
            models=models,
            max_wait=env_float(env, _MAX_WAIT.name, _MAX_WAIT.default),
            publish_timeout=env_float(
                env, _PUBLISH_TIMEOUT.name, _PUBLISH_TIMEOUT.default, minimum=0.1
            ),
            job_ttl=env_float(env, _JOB_TTL.name, _JOB_TTL.default, minimum=1.0),
            max_jobs=env_int(env, _MAX_JOBS.name, _MAX_JOBS.default, minimum=1),
            queue_bounds=QueueBounds.from_env(env),
            declare_topology=declares_topology(env),
            log_retention=LogRetention.from_env(env),
            api_tokens=env_list(env, _API_TOKENS.name, _API_TOKENS.default),
            senders=Senders.from_env(env),
            client_limits=ClientLimits.from_env(env),
            tracing=TracingSettings.from_env(env),
            logs=LogSettings.from_env(env),
            access_log=access_log_enabled(env),
            batch_limits=BatchLimits.from_env(env),
            body_bytes=env_int(env, _BODY_BYTES.name, _BODY_BYTES.default, minimum=1),
            body_timeout=env_float(env, _BODY_TIMEOUT.name, _BODY_TIMEOUT.default, minimum=0.1),
            webhooks=WebhookSettings.from_env(env),
            event_loop=event_loop_from_env(env),
            processes=processes_from_env(env, port),
        )._checked()

    def _checked(self) -> GatewaySettings:
        """Byte budgets that could never take a request the limits allow are a mistake."""
        client = self.client_limits.body_bytes
        largest = max(self.batch_limits.max_bytes, MAX_REQUEST_BYTES)
        if client < largest:
            raise SettingsError(
                f"IMGQ_CLIENT_BODY_BYTES ({client}) is less than the largest body a client may "
                f"send ({largest}: IMGQ_BATCH_MAX_BYTES, or an upload with its form)"
            )
        if self.body_bytes < client:
            raise SettingsError(
                f"IMGQ_BODY_BYTES ({self.body_bytes}) is less than IMGQ_CLIENT_BODY_BYTES "
                f"({client})"
            )
        return self
