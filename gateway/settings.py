"""The gateway's settings, read once from the environment."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from gateway.senders import Senders
from shared.catalog import catalog_models
from shared.errors import SettingsError
from shared.settings import Environ, broker_urls, env_float, env_int, env_list, env_str
from shared.topology import LogRetention, QueueBounds, declares_topology

_REPO_IMAGES = Path(__file__).resolve().parent.parent / "images"


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

    @classmethod
    def from_env(cls, env: Environ) -> GatewaySettings:
        models = catalog_models(env)
        gallery = Path(env_str(env, "IMGQ_GALLERY_DIR", str(_REPO_IMAGES)))
        if not gallery.is_dir():
            raise SettingsError(f"IMGQ_GALLERY_DIR {str(gallery)!r} is not a directory")
        return cls(
            broker_urls=broker_urls(env),
            host=env_str(env, "IMGQ_HTTP_HOST", "127.0.0.1"),
            port=env_int(env, "IMGQ_HTTP_PORT", 8080),
            gallery_dir=gallery,
            models=models,
            max_wait=env_float(env, "IMGQ_MAX_WAIT", 30.0),
            publish_timeout=env_float(env, "IMGQ_PUBLISH_TIMEOUT", 5.0, minimum=0.1),
            job_ttl=env_float(env, "IMGQ_JOB_TTL", 3600.0, minimum=1.0),
            max_jobs=env_int(env, "IMGQ_MAX_JOBS", 100_000, minimum=1),
            queue_bounds=QueueBounds.from_env(env),
            declare_topology=declares_topology(env),
            log_retention=LogRetention.from_env(env),
            api_tokens=env_list(env, "IMGQ_API_TOKENS", ()),
            senders=Senders.from_env(env),
        )
