"""The classifier replica's settings, read once from the environment."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from shared.catalog import CATALOG
from shared.errors import SettingsError
from shared.settings import Environ, broker_url, env_float, env_int, env_list, env_str
from shared.topology import QueueBounds, declares_topology


@dataclass(frozen=True, slots=True)
class ClassifierSettings:
    broker_url: str
    models: tuple[str, ...]
    replica_id: str
    # torch intra-op threads.  Replicas x threads must not exceed the cores: oversubscribed
    # replicas ran 8x slower on this hardware (../shared/MEASURED.md).  Whoever starts
    # replicas sets this; 1 is the safe default when we cannot know how many run beside us.
    torch_threads: int
    # Up to this many jobs for the same model run as one forward pass.
    batch_size: int
    # How long to wait for a batch to fill once its first job is in hand.
    batch_wait: float
    heartbeat_interval: float
    health_file: str
    # On SIGTERM, in-flight jobs get this long to finish before they are requeued.
    drain_timeout: float
    queue_bounds: QueueBounds
    # False when running as a least-privilege broker user: look the topology up instead.
    declare_topology: bool
    # Test hooks, off unless set.  Seconds added to every inference (holds a job "in
    # flight"), and an image name whose job kills the process as a segfault would.
    debug_delay: float
    debug_crash_image: str | None
    # GET /metrics (Prometheus) on this address; port 0 turns the listener off.
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9100

    @property
    def prefetch(self) -> int:
        # Exactly one batch in hand: more would only take jobs away from idle replicas.
        return self.batch_size

    @classmethod
    def from_env(cls, env: Environ) -> ClassifierSettings:
        models = env_list(env, "IMGQ_MODELS", tuple(CATALOG))
        unknown = [m for m in models if m not in CATALOG]
        if unknown:
            raise SettingsError(
                f"IMGQ_MODELS names unknown models {unknown}; known: {', '.join(CATALOG)}"
            )
        return cls(
            broker_url=broker_url(env),
            models=models,
            replica_id=env_str(env, "IMGQ_REPLICA_ID", f"{socket.gethostname()}-{os.getpid()}"),
            torch_threads=env_int(env, "IMGQ_TORCH_THREADS", 1, minimum=1),
            batch_size=env_int(env, "IMGQ_BATCH_SIZE", 1, minimum=1),
            batch_wait=env_float(env, "IMGQ_BATCH_WAIT_MS", 0.0) / 1000,
            heartbeat_interval=env_float(env, "IMGQ_HEARTBEAT_INTERVAL", 5.0, minimum=0.1),
            health_file=env_str(env, "IMGQ_HEALTH_FILE", "/tmp/imgq-classifier.alive"),
            drain_timeout=env_float(env, "IMGQ_DRAIN_TIMEOUT", 20.0),
            queue_bounds=QueueBounds.from_env(env),
            declare_topology=declares_topology(env),
            debug_delay=env_float(env, "IMGQ_DEBUG_DELAY", 0.0),
            debug_crash_image=env.get("IMGQ_DEBUG_CRASH_IMAGE") or None,
            metrics_host=env_str(env, "IMGQ_METRICS_HOST", "127.0.0.1"),
            metrics_port=env_int(env, "IMGQ_METRICS_PORT", 9100, maximum=65535),
        )
