"""The classifier replica's settings, read once from the environment."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Final, TypeVar

from classifier_service.precision import Precision
from shared.catalog import TORCHVISION_NAME, catalog_models, split_model_id
from shared.errors import SettingsError
from shared.logs import LogSettings
from shared.settings import (
    CLASSIFIER,
    Environ,
    Variable,
    broker_urls,
    env_float,
    env_int,
    env_list,
    env_str,
    variable,
)
from shared.topology import QueueBounds, declares_topology
from shared.tracing import TracingSettings

_Choice = TypeVar("_Choice", bound=StrEnum)


class Runtime(StrEnum):
    """What runs the models.  ``auto``: ONNX Runtime where it is installed, else torch."""

    AUTO = "auto"
    ONNXRUNTIME = "onnxruntime"
    # torch itself (frozen TorchScript for the built-ins): the fallback where ONNX Runtime is not
    # installed, and the reference the ONNX exports are checked against.
    TORCH = "torch"


class Device(StrEnum):
    """Where ONNX Runtime runs the models.  ``auto``: CUDA when its provider is installed."""

    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


_REPLICA_ID = variable(
    "IMGQ_REPLICA_ID",
    None,
    CLASSIFIER,
    "the replica's name in results, heartbeats and `/status`",
    shown="host-pid",
)
_INFERENCE_THREADS = variable(
    "IMGQ_INFERENCE_THREADS",
    1,
    CLASSIFIER,
    "inference threads; replicas × threads must not exceed the cores",
)
# Four: under load a batch's results, confirms, acks and hand-off to the inference thread cost
# once for four jobs (a job's plumbing in a replica fell from about 2.2 to 1.0 core-ms), while
# the model costs the same per image at batch 1, 4 or 8.  Only jobs already waiting are batched
# (IMGQ_BATCH_WAIT_MS 0), so a job alone never waits for company.
DEFAULT_BATCH_SIZE: Final = 4
_BATCH_SIZE = variable(
    "IMGQ_BATCH_SIZE",
    DEFAULT_BATCH_SIZE,
    CLASSIFIER,
    "most jobs for one model run as one forward pass (only jobs already waiting, unless "
    "`IMGQ_BATCH_WAIT_MS`)",
)
_BATCH_WAIT_MS = variable(
    "IMGQ_BATCH_WAIT_MS",
    0.0,
    CLASSIFIER,
    "milliseconds a batch waits to fill once its first job is in hand",
)
_HEARTBEAT_INTERVAL = variable(
    "IMGQ_HEARTBEAT_INTERVAL",
    5.0,
    CLASSIFIER,
    "seconds between heartbeats (and touches of the health file)",
)
_HEALTH_FILE = variable(
    "IMGQ_HEALTH_FILE",
    "/tmp/imgq-classifier.alive",
    CLASSIFIER,
    "rewritten every heartbeat interval, broker or not, with the replica's state: "
    "`python -m classifier_service.healthcheck` (alive) and `--ready` read it",
)
_STALL_TIMEOUT = variable(
    "IMGQ_STALL_TIMEOUT",
    180.0,
    CLASSIFIER,
    "seconds a replica may hold work without progress before it reports itself stalled "
    "(unhealthy: its supervisor restarts it); keep it well above `IMGQ_JOB_TIME_LIMIT`",
)
_JOURNAL_FILE = variable(
    "IMGQ_JOURNAL_FILE",
    None,
    CLASSIFIER,
    "the jobs the replica is running, kept across its restarts (on the same filesystem) so "
    "that a job that keeps crashing replicas is stopped",
    shown="`$IMGQ_HEALTH_FILE.jobs`",
)
_DRAIN_TIMEOUT = variable(
    "IMGQ_DRAIN_TIMEOUT",
    20.0,
    CLASSIFIER,
    "seconds to finish in-flight work on SIGTERM before it is requeued",
)
_JOB_TIME_LIMIT = variable(
    "IMGQ_JOB_TIME_LIMIT",
    60.0,
    CLASSIFIER,
    "seconds a batch may take to decode and classify before its jobs fail",
)
_METRICS_HOST = variable(
    "IMGQ_METRICS_HOST", "127.0.0.1", CLASSIFIER, "address of the replica's `/metrics`"
)
_METRICS_PORT = variable(
    "IMGQ_METRICS_PORT", 9100, CLASSIFIER, "port of the replica's `/metrics`; `0` = off"
)
_RUNTIME = variable(
    "IMGQ_RUNTIME",
    Runtime.AUTO.value,
    CLASSIFIER,
    "`onnxruntime`, `torch`, or `auto`: ONNX Runtime where installed",
)
_DEVICE = variable(
    "IMGQ_DEVICE",
    Device.AUTO.value,
    CLASSIFIER,
    "`cpu`, `cuda` (needs `onnxruntime-gpu`), or `auto`: CUDA where available",
)
_PRECISION = variable(
    "IMGQ_PRECISION",
    Precision.FP32.value,
    CLASSIFIER,
    "`fp32` (exact) or `bf16` (faster, near fp32's answers) for models whose `model.json` does "
    "not say; bf16 runs only on a CPU with bfloat16 instructions and OpenVINO installed (the "
    "`bf16` extra), else fp32, logged",
)
ALLOW_TORCHSCRIPT = variable(
    "IMGQ_ALLOW_TORCHSCRIPT",
    "false",
    CLASSIFIER,
    "`true`: serve repository models whose network is TorchScript, which runs its own code "
    "when loaded; `false`: such folders are skipped",
)
_MODEL_CACHE = variable(
    "IMGQ_MODEL_CACHE",
    None,
    CLASSIFIER,
    "exported ONNX models, one folder per model and weights (`/models` in the image)",
    shown="`$XDG_CACHE_HOME/imgq/models` (else `~/.cache/imgq/models`)",
)
_MODEL_DIR = variable(
    "IMGQ_MODEL_DIR",
    None,
    CLASSIFIER,
    "the model repository: `<name>/<version>/` folders of models to serve, found at start-up",
    shown="`$XDG_CACHE_HOME/imgq/repository` (else `~/.cache/imgq/repository`)",
)
_SERVE: Variable[tuple[str, ...]] = variable(
    "IMGQ_SERVE",
    (),
    CLASSIFIER,
    "the repository models to serve, comma-separated `name` (every version) or `name@version`;"
    " unset: all",
    shown="unset (all)",
)
_TORCHVISION_MODELS: Variable[tuple[str, ...]] = variable(
    "IMGQ_TORCHVISION_MODELS",
    (),
    CLASSIFIER,
    "torchvision classifiers to serve besides the catalogue, comma-separated",
)
_WEIGHTS_DIR = variable(
    "IMGQ_WEIGHTS_DIR",
    None,
    CLASSIFIER,
    "where the torchvision models' weights files are (a replica never downloads them)",
    shown="torch's cache: `$TORCH_HOME/hub/checkpoints`",
)
_RESTART_COUNT = variable(
    "IMGQ_RESTART_COUNT",
    0,
    CLASSIFIER,
    "set by the supervisor that restarted the replica (the local launcher); shown on `/status`",
)
_DEBUG_DELAY = variable(
    "IMGQ_DEBUG_DELAY",
    0.0,
    CLASSIFIER,
    "test hook: seconds added to each job's inference (a batch of n takes n times as long)",
)
_DEBUG_CRASH_IMAGE = variable(
    "IMGQ_DEBUG_CRASH_IMAGE",
    None,
    CLASSIFIER,
    "test hook: an image name whose job kills the replica, as a segfault would",
    shown="unset",
)


@dataclass(frozen=True, slots=True)
class ClassifierSettings:
    # Every node of the broker (one URL unless it is a cluster): any of them will do.
    broker_urls: tuple[str, ...]
    models: tuple[str, ...]
    replica_id: str
    # Inference threads (the runtime's intra-op pool: ONNX Runtime's, OpenVINO's or torch's).
    # Replicas x threads must not exceed the cores: oversubscribed replicas ran 8x slower on
    # this hardware.  Whoever starts replicas sets this; 1 is the safe default when we cannot
    # know how many run beside us.
    inference_threads: int
    # Up to this many jobs for the same model run as one forward pass.
    batch_size: int
    # How long to wait for a batch to fill once its first job is in hand.
    batch_wait: float
    heartbeat_interval: float
    health_file: str
    # Where the jobs in hand are journalled (classifier_service/journal.py): it must outlive
    # the process, on whatever its supervisor keeps across a restart.
    journal_file: Path
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
    metrics_host: str = _METRICS_HOST.default
    metrics_port: int = _METRICS_PORT.default
    # torchvision classifiers to serve besides the catalogue, each only if its weights file
    # is in weights_dir (see classifier_service/torch_tools/torchvision_models.py).
    torchvision_models: tuple[str, ...] = ()
    weights_dir: Path = field(default_factory=lambda: default_weights_dir(os.environ))
    runtime: Runtime = Runtime.AUTO
    device: Device = Device.AUTO
    # Exported ONNX models, one folder per model and weights hash (classifier_service/
    # model_cache.py): a replica exports a model once, then starts from the folder.
    model_cache: Path = field(default_factory=lambda: default_model_cache(os.environ))
    # The model repository (classifier_service/repository.py): every model is served from a
    # folder here; the built-ins' folders are written by prepare_models (or at start-up).
    model_dir: Path = field(default_factory=lambda: default_model_dir(os.environ))
    # name or name@version of repository models to serve; empty: all of them.
    serve: tuple[str, ...] = ()
    # What a model runs in where its model.json does not say (classifier_service/precision.py).
    precision: Precision = Precision.FP32
    # Whether repository folders with a TorchScript network (code, run when loaded) are served.
    allow_torchscript: bool = False
    # Set by a supervisor that restarted this replica (the local launcher); shown on /status.
    restart_count: int = 0
    # A batch whose decoding and inference take longer fails its jobs (time_limit_exceeded)
    # and the replica goes on with a fresh inference thread: a picture that takes minutes to
    # decode must not stop a replica.
    job_time_limit: float = _JOB_TIME_LIMIT.default
    # Holding work with no progress for this long, the replica reports itself stalled
    # (classifier_service/health.py): alive by its heartbeats, useless all the same.
    stall_timeout: float = _STALL_TIMEOUT.default
    # OpenTelemetry (shared/tracing.py): off unless asked for.
    tracing: TracingSettings = field(default_factory=TracingSettings)
    logs: LogSettings = field(default_factory=LogSettings)

    @property
    def prefetch(self) -> int:
        # Two batches in hand: the next is here when this one's inference ends, so the
        # inference thread never waits for a round trip to the broker (this batch's acks going
        # out, the next deliveries coming in), and this one's results go out with the next
        # one's "started" (runner.py).  More would only take jobs away from idle replicas.
        return 2 * self.batch_size

    @classmethod
    def from_env(cls, env: Environ) -> ClassifierSettings:
        models = catalog_models(env)
        health_file = env_str(env, _HEALTH_FILE.name, _HEALTH_FILE.default)
        return cls(
            torchvision_models=_torchvision_models(env),
            weights_dir=Path(env_str(env, _WEIGHTS_DIR.name, str(default_weights_dir(env)))),
            broker_urls=broker_urls(env),
            restart_count=env_int(env, _RESTART_COUNT.name, _RESTART_COUNT.default),
            models=models,
            replica_id=env_str(env, _REPLICA_ID.name, f"{socket.gethostname()}-{os.getpid()}"),
            inference_threads=env_int(
                env, _INFERENCE_THREADS.name, _INFERENCE_THREADS.default, minimum=1
            ),
            batch_size=env_int(env, _BATCH_SIZE.name, _BATCH_SIZE.default, minimum=1),
            batch_wait=env_float(env, _BATCH_WAIT_MS.name, _BATCH_WAIT_MS.default) / 1000,
            heartbeat_interval=env_float(
                env, _HEARTBEAT_INTERVAL.name, _HEARTBEAT_INTERVAL.default, minimum=0.1
            ),
            health_file=health_file,
            journal_file=Path(env_str(env, _JOURNAL_FILE.name, f"{health_file}.jobs")),
            stall_timeout=env_float(env, _STALL_TIMEOUT.name, _STALL_TIMEOUT.default, minimum=1),
            drain_timeout=env_float(env, _DRAIN_TIMEOUT.name, _DRAIN_TIMEOUT.default),
            job_time_limit=env_float(
                env, _JOB_TIME_LIMIT.name, _JOB_TIME_LIMIT.default, minimum=0.1
            ),
            queue_bounds=QueueBounds.from_env(env),
            declare_topology=declares_topology(env),
            debug_delay=env_float(env, _DEBUG_DELAY.name, _DEBUG_DELAY.default),
            debug_crash_image=env.get(_DEBUG_CRASH_IMAGE.name) or None,
            metrics_host=env_str(env, _METRICS_HOST.name, _METRICS_HOST.default),
            metrics_port=env_int(env, _METRICS_PORT.name, _METRICS_PORT.default, maximum=65535),
            runtime=_choice(env, _RUNTIME, Runtime),
            device=_choice(env, _DEVICE, Device),
            model_cache=Path(env_str(env, _MODEL_CACHE.name, str(default_model_cache(env)))),
            tracing=TracingSettings.from_env(env),
            logs=LogSettings.from_env(env),
            model_dir=Path(env_str(env, _MODEL_DIR.name, str(default_model_dir(env)))),
            serve=_serve(env),
            precision=_choice(env, _PRECISION, Precision),
            allow_torchscript=_flag(env, ALLOW_TORCHSCRIPT),
        )


def default_weights_dir(env: Environ) -> Path:
    """torch's own download cache, ``torch.hub.get_dir() + "/checkpoints"``, without importing
    torch: ``$TORCH_HOME``, else ``$XDG_CACHE_HOME/torch``, else ``~/.cache/torch``."""
    cache = env.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    torch_home = env.get("TORCH_HOME") or os.path.join(cache, "torch")
    return Path(os.path.expanduser(torch_home)) / "hub" / "checkpoints"


def default_model_cache(env: Environ) -> Path:
    """``$XDG_CACHE_HOME/imgq/models``, else ``~/.cache/imgq/models``."""
    cache = env.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(os.path.expanduser(cache)) / "imgq" / "models"


def default_model_dir(env: Environ) -> Path:
    """``$XDG_CACHE_HOME/imgq/repository``, else ``~/.cache/imgq/repository``: beside the
    default model cache, and writable by the service user (the built-ins are written there)."""
    return default_model_cache(env).parent / "repository"


def _serve(env: Environ) -> tuple[str, ...]:
    wanted = env_list(env, _SERVE.name, _SERVE.default)
    malformed = [entry for entry in wanted if split_model_id(entry) is None]
    if malformed:
        raise SettingsError(
            f"IMGQ_SERVE names {malformed}, which are neither `name` nor `name@version` "
            "(names: lower case, digits and _ . -; versions may add upper case)"
        )
    return wanted


def _choice(env: Environ, setting: Variable[str], kind: type[_Choice]) -> _Choice:
    raw = env_str(env, setting.name, setting.default).lower()
    try:
        return kind(raw)
    except ValueError:
        allowed = ", ".join(member.value for member in kind)
        raise SettingsError(f"{setting.name} must be one of {allowed}, got {raw!r}") from None


def _flag(env: Environ, setting: Variable[str]) -> bool:
    raw = env_str(env, setting.name, setting.default).lower()
    if raw not in ("true", "false"):
        raise SettingsError(f"{setting.name} must be true or false, got {raw!r}")
    return raw == "true"


def _torchvision_models(env: Environ) -> tuple[str, ...]:
    names = env_list(env, _TORCHVISION_MODELS.name, _TORCHVISION_MODELS.default)
    malformed = [name for name in names if not TORCHVISION_NAME.fullmatch(name)]
    if malformed:
        raise SettingsError(
            f"IMGQ_TORCHVISION_MODELS names {malformed}, which are not torchvision model names "
            "(lower case, digits and underscores: see torchvision.models.list_models())"
        )
    return names
