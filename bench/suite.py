"""The benchmark's phases, in order, each on a machine left as quiet as the phase allows.

1. The bare model in subprocesses (nothing else running): the reference ceiling, with the
   runtime the replicas use (ONNX Runtime where installed) and with frozen TorchScript beside
   it, decoding + preprocessing alone, and bf16 against fp32 (agreement and speed-up).
2. A private broker, a gateway whose gallery is the photo folder, one replica using every
   core, then N replicas: throughput and latency over HTTP and over AMQP, the CPU each part
   spends per job, the `imgq` command on distinct photos, latency at low load, the replicas'
   memory, and the accuracy of every model.
3. Without replicas: a fresh gateway's submission rate and its CPU per submission, on
   asyncio's own event loop and on uvloop (one process each), then one process per core;
   and the long-polls the default gateway holds.
4. The per-client shares: a gateway with its default shares, N replicas, clients told apart
   by the address each names as a trusted proxy's client; one client alone against 16, and a
   polite client beside a bulk one.
5. A three-node cluster with the same replicas: end-to-end HTTP throughput, beside phase 2's.
6. The event log alone: how many events one gateway applies a second, replaying a log of over
   100,000 events and following one live (``bench/log_rate.py``).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from bench import (
    accuracy,
    amqp_load,
    bare,
    cli_load,
    fairness,
    gateway_load,
    http_load,
    log_rate,
    log_stats,
    precision,
)
from bench.accuracy import Accuracy
from bench.bare import WorkerSpec
from bench.fairness import FairnessResult
from bench.gateway_load import LongPollResult, SubmitResult
from bench.load import LoadResult
from bench.machine import CpuMeter, ForeignLoad, process_tree
from bench.photos import image_files, read_labels
from bench.precision import PrecisionResult
from classifier_service.health import readiness
from classifier_service.settings import DEFAULT_BATCH_SIZE
from compose.broker import BrokerNode, start_cluster
from compose.stack import (
    ManagedProcess,
    Stack,
    threads_per_replica,
    wait_http_ok,
    wait_replicas_online,
)
from gateway.clients import ClientLimits
from gateway.event_loop import uvloop_installed

log = logging.getLogger("imgq.bench")

MODEL = "efficientnet_lite0"
# The small gallery image the gateway-only phase submits (its own gallery is images/).
SUBMIT_IMAGE = "cat.jpg"
REPLICA_START_TIMEOUT = 240.0
BARE_PHASE = "bare model"
GATEWAY_PHASE = "gateway alone"
FAIRNESS_PHASE = "per-client shares"
CLUSTER_PHASE = "three-node cluster"
LOG_PHASE = "event log"
# Jobs of the polite client in each of its two runs: one at a time, a few seconds each.
POLITE_JOBS = 60
# The runtime the frozen-TorchScript reference rows run (IMGQ_RUNTIME=torch).
TORCH = "torch"


def service_phase(replicas: int) -> str:
    return f"service with {replicas} replica{'s' if replicas > 1 else ''}"


@dataclass(frozen=True)
class Options:
    replicas: int
    jobs: int
    concurrency: int
    images: Path
    bare_seconds: float
    submissions: int
    long_polls: int
    accuracy_models: tuple[str, ...]
    # No new job starts after this long in one run: bounded time on a slow or busy machine.
    max_seconds: float = 40.0
    batch_size: int | None = None  # None: the service's default
    batch_wait_ms: float | None = None
    # Jobs whose events (three each) make the replayed log, and jobs written while followed.
    log_jobs: int = 33_334
    live_log_jobs: int = 20_000

    @property
    def threads(self) -> int:
        return threads_per_replica(self.replicas)

    @property
    def batch(self) -> int:
        """The replicas' batch size: the one given, else the service's default."""
        return self.batch_size or DEFAULT_BATCH_SIZE

    @property
    def replica_env(self) -> dict[str, str]:
        env = {}
        if self.batch_size is not None:
            env["IMGQ_BATCH_SIZE"] = str(self.batch_size)
        if self.batch_wait_ms is not None:
            env["IMGQ_BATCH_WAIT_MS"] = f"{self.batch_wait_ms:g}"
        return env


@dataclass(frozen=True)
class GatewayVariant:
    """A configuration of the gateway the "gateway alone" phase measures."""

    event_loop: str
    processes: int = 1

    @property
    def label(self) -> str:
        plural = "es" if self.processes > 1 else ""
        return f"{self.event_loop}, {self.processes} process{plural}"

    @property
    def env(self) -> dict[str, str]:
        return {"IMGQ_EVENT_LOOP": self.event_loop, "IMGQ_GATEWAY_PROCESSES": str(self.processes)}


def default_gateway() -> GatewayVariant:
    """What a gateway runs with its settings left alone."""
    return GatewayVariant("uvloop" if uvloop_installed() else "asyncio")


def gateway_variants() -> list[GatewayVariant]:
    """asyncio's own loop beside uvloop (both one process), then one process per core."""
    default = default_gateway()
    variants = [GatewayVariant("asyncio")]
    if default not in variants:
        variants.append(default)
    if cores() > 1:
        variants.append(GatewayVariant(default.event_loop, cores()))
    return variants


@dataclass
class GatewaySubmits:
    result: SubmitResult
    # CPU milliseconds per accepted submission: the gateway's processes, the broker, the load
    # generator.
    cpu_ms: dict[str, float]
    # Cores other work used while this configuration was measured.
    foreign_cores: float


@dataclass
class Measurements:
    bare_naive: float | None = None
    # Throughput of the bare model laid out as the replicas are: {replicas: images/s}, with
    # the runtime the replicas run (bare_runtime) and with frozen TorchScript.
    bare: dict[int, float] = field(default_factory=dict)
    # ... and its CPU per image (all threads), which other work on the machine does not skew.
    bare_cpu_ms: dict[int, float] = field(default_factory=dict)
    bare_runtime: str = ""
    bare_torch: dict[int, float] = field(default_factory=dict)
    # Decoding and preprocessing alone, one thread: milliseconds per image.
    preprocess_ms: float | None = None
    # bf16 against fp32 on the sample: top-1 agreement, logit difference, forward-pass speed.
    precision: PrecisionResult | None = None
    # VmRSS of each replica (all catalogue models loaded), after the throughput runs.
    replica_rss_mb: list[float] = field(default_factory=list)
    # End to end over HTTP on a three-node cluster, N replicas.
    http_cluster: LoadResult | None = None
    bare_per_image_ms: dict[str, float] = field(default_factory=dict)
    http: dict[int, LoadResult] = field(default_factory=dict)
    amqp: dict[int, LoadResult] = field(default_factory=dict)
    # The `imgq` command on distinct photos (one process, batches), N replicas.
    cli: LoadResult | None = None
    http_low_load: LoadResult | None = None
    amqp_low_load: LoadResult | None = None
    accuracy: list[Accuracy] = field(default_factory=list)
    # The gateway alone, in each of its configurations, in the order they ran.
    submits: dict[GatewayVariant, GatewaySubmits] = field(default_factory=dict)
    long_polls: LongPollResult | None = None
    gateway_idle_rss_mb: float | None = None
    fairness: FairnessResult | None = None
    # Events one gateway applies from the log, each way the log was written.
    log_rates: list[log_rate.LogRate] = field(default_factory=list)
    # Per throughput run: CPU milliseconds per job of each part of the system ...
    cpu_per_job: dict[str, dict[str, float]] = field(default_factory=dict)
    # ... of which their main threads' (the replicas' event loops, beside inference) ...
    loop_per_job: dict[str, dict[str, float]] = field(default_factory=dict)
    # ... and what it wrote to the event log (messages and events per job).
    log_stats: dict[str, log_stats.LogStats] = field(default_factory=dict)
    # Cores that other work on the machine used during each phase (a lower bound).
    foreign_cores: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        load = ForeignLoad()
        try:
            yield
        finally:
            self.foreign_cores[name] = load.cores()


def replica_counts(options: Options) -> list[int]:
    return sorted({1, options.replicas})


def measure_bare(options: Options, log_dir: Path, m: Measurements) -> None:
    with m.phase(BARE_PHASE):
        _measure_bare(options, log_dir, m)


def _measure_bare(options: Options, log_dir: Path, m: Measurements) -> None:
    batch = options.batch
    for replicas in replica_counts(options):
        threads = threads_per_replica(replicas)
        specs = [WorkerSpec(MODEL, threads=threads, batch=batch)] * replicas
        result = bare.run_together(specs, options.images, log_dir, seconds=options.bare_seconds)
        m.bare[replicas] = result.images_per_s
        if result.cpu_ms_per_image is not None:
            m.bare_cpu_ms[replicas] = result.cpu_ms_per_image
        # Its threads are in the layout column already.
        m.bare_runtime = re.sub(r", \d+ threads?$", "", result.runtime) or "auto"
        torch_specs = [WorkerSpec(MODEL, threads=threads, batch=batch, runtime=TORCH)] * replicas
        m.bare_torch[replicas] = bare.run_together(
            torch_specs, options.images, log_dir, seconds=options.bare_seconds
        ).images_per_s
        log.info(
            "bare model, %d x %s: %.1f images/s (%s); frozen TorchScript %.1f",
            replicas,
            specs[0].describe(),
            result.images_per_s,
            m.bare_runtime,
            m.bare_torch[replicas],
        )
    naive = WorkerSpec(MODEL, threads=0, batch=1, eager=True, runtime=TORCH)
    m.bare_naive = bare.run_together(
        [naive], options.images, log_dir, seconds=options.bare_seconds
    ).images_per_s
    log.info("bare model, naive (%s): %.1f images/s", naive.describe(), m.bare_naive)
    prep = WorkerSpec(MODEL, threads=1, batch=1, preprocess_only=True)
    per_s = bare.run_together([prep], options.images, log_dir, seconds=options.bare_seconds)
    m.preprocess_ms = 1000 / per_s.images_per_s if per_s.images_per_s else None
    log.info("decode + preprocess alone: %s ms per image", m.preprocess_ms)
    try:
        m.precision = precision.measure(
            options.images, log_dir, model=MODEL, seconds=options.bare_seconds
        )
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        m.notes.append(f"bf16 against fp32 not measured: {exc}")
    else:
        log.info(
            "bf16 (%s) against fp32: same top-1 on %d/%d, %.1f vs %.1f images/s",
            m.precision.precision,
            m.precision.same_top1,
            m.precision.photos,
            m.precision.bf16_images_per_s,
            m.precision.fp32_images_per_s,
        )


def _start_replicas(
    stack: Stack, options: Options, count: int, base_url: str, tag: str
) -> list[ManagedProcess]:
    threads = threads_per_replica(count)
    replicas = [
        stack.start_replica(f"{tag}-{i + 1}", threads=threads, env=options.replica_env)
        for i in range(count)
    ]
    # Each replica's health file says ready once it consumes, which is after its models are
    # loaded and warm: a stale registration cannot fool this.
    health = [stack.log_dir / f"{r.name}.alive" for r in replicas]
    wait_until(lambda: all(readiness(p) is None for p in health), REPLICA_START_TIMEOUT, replicas)
    wait_replicas_online(base_url, count, 60)
    return replicas


def wait_until(condition: Callable[[], bool], timeout: float, procs: list[ManagedProcess]) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        for proc in procs:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited early; log tail:\n{proc.log_tail()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"not ready after {timeout:.0f} s")
        time.sleep(0.2)


def measure_service(options: Options, node: BrokerNode, stack: Stack, m: Measurements) -> None:
    # The gallery of this gateway is the photo folder: HTTP jobs classify the same photos as
    # the bare model and the AMQP producers.
    gateway, base_url = stack.start_gateway(env={"IMGQ_GALLERY_DIR": str(options.images)})
    wait_http_ok(f"{base_url}/readyz", 60, gateway)
    for count in replica_counts(options):
        with m.phase(service_phase(count)):
            replicas = _start_replicas(stack, options, count, base_url, f"replica-x{count}")
            groups = {
                "replicas": [r.pid for r in replicas],
                "gateway": [gateway.pid],
                "broker": broker_pids(node),
                "load generator": [os.getpid()],
            }
            try:
                _measure_replicas(options, node.url, base_url, m, count, groups, stack.log_dir)
                if count == options.replicas:
                    m.replica_rss_mb = [gateway_load.rss_mb(r.pid) for r in replicas]
            finally:
                for replica in replicas:
                    replica.terminate()
    gateway.terminate()


def broker_pids(node: BrokerNode) -> list[int]:
    """The Erlang VM of the node (its pid file), where the broker's work is done."""
    try:
        return [int((node.base_dir / "node.pid").read_text().strip())]
    except (OSError, ValueError):
        return []


def _measure_replicas(
    options: Options,
    broker_url: str,
    base_url: str,
    m: Measurements,
    count: int,
    groups: dict[str, list[int]],
    log_dir: Path,
) -> None:
    log.info("%d replica(s) x %d thread(s) online", count, threads_per_replica(count))
    files = image_files(options.images)
    names = [p.name for p in files]
    photos = {p.name: p.read_bytes() for p in files}
    jobs, concurrency, limit = options.jobs, options.concurrency, options.max_seconds
    _warm_up(options, base_url, names)
    since = datetime.datetime.now(datetime.UTC)
    meter = CpuMeter(groups, main_threads=("replicas",))
    m.http[count] = _http_run(options, base_url, names)
    m.cpu_per_job[f"HTTP, {count}"] = meter.per_job_ms(m.http[count].jobs)
    m.loop_per_job[f"HTTP, {count}"] = meter.main_thread_per_job_ms(m.http[count].jobs)
    m.log_stats[f"HTTP, {count}"] = asyncio.run(log_stats.read_since(broker_url, since))
    log.info("HTTP, %d replica(s): %.1f jobs/s", count, m.http[count].throughput)
    since = datetime.datetime.now(datetime.UTC)
    meter = CpuMeter(groups, main_threads=("replicas",))
    m.amqp[count] = asyncio.run(
        amqp_load.run(
            broker_url, MODEL, photos, jobs=jobs, concurrency=concurrency, max_seconds=limit
        )
    )
    m.cpu_per_job[f"AMQP, {count}"] = meter.per_job_ms(m.amqp[count].jobs)
    m.loop_per_job[f"AMQP, {count}"] = meter.main_thread_per_job_ms(m.amqp[count].jobs)
    m.log_stats[f"AMQP, {count}"] = asyncio.run(log_stats.read_since(broker_url, since))
    log.info("AMQP, %d replica(s): %.1f jobs/s", count, m.amqp[count].throughput)
    if count != options.replicas:
        return
    m.cli = _cli_run(options, base_url, log_dir)
    log.info("CLI, %d replica(s): %.1f jobs/s", count, m.cli.throughput)
    # Each photo alone on one replica's share of the cores: what a job at low load costs at
    # least.  Measured here, just before the low-load runs (the replicas idle), so that the
    # two are compared under the same conditions on a shared machine.
    single = WorkerSpec(MODEL, threads=options.threads, batch=1)
    m.bare_per_image_ms = bare.run_together(
        [single], options.images, log_dir, seconds=0, per_image=2
    ).per_image_ms
    # One job at a time, each photo once: the latency the service adds to the model's own.
    m.http_low_load = asyncio.run(
        http_load.run(base_url, MODEL, names, jobs=len(names), concurrency=1)
    )
    m.amqp_low_load = asyncio.run(
        amqp_load.run(broker_url, MODEL, photos, jobs=len(names), concurrency=1)
    )
    log.info("low load: HTTP and AMQP done; accuracy next")
    m.accuracy = asyncio.run(
        accuracy.measure(
            base_url, options.accuracy_models, read_labels(options.images), concurrency=concurrency
        )
    )


def _cli_run(options: Options, base_url: str, log_dir: Path) -> LoadResult:
    """The command line on as many distinct photos as an HTTP run has jobs."""
    folder = log_dir / "cli-photos"
    cli_load.photos(options.images, options.jobs, folder)
    out = log_dir / "cli-results.jsonl"
    # Generous: the HTTP run's bound, and as long again for what a slow machine adds.
    return cli_load.run(base_url, MODEL, folder, out, timeout=120 + 2 * options.max_seconds)


def _warm_up(options: Options, base_url: str, names: list[str]) -> None:
    """The first jobs meet cold caches and unprofiled batch shapes: not measured."""
    concurrency = options.concurrency
    asyncio.run(
        http_load.run(base_url, MODEL, names, jobs=2 * concurrency, concurrency=concurrency)
    )


def _http_run(options: Options, base_url: str, names: list[str]) -> LoadResult:
    """One measured HTTP throughput run: submit, then long-poll, from many clients."""
    return asyncio.run(
        http_load.run(
            base_url,
            MODEL,
            names,
            jobs=options.jobs,
            concurrency=options.concurrency,
            max_seconds=options.max_seconds,
        )
    )


def measure_gateway(options: Options, node: BrokerNode, stack: Stack, m: Measurements) -> None:
    """No replica runs now: jobs queue up, and only the gateway and the broker work."""
    with m.phase(GATEWAY_PHASE):
        for variant in gateway_variants():
            _measure_gateway(options, node, stack, m, variant)


# Submissions before each measured run, not measured: a fresh gateway's first requests meet
# cold caches.
GATEWAY_WARM_UP = 200


def _measure_gateway(
    options: Options, node: BrokerNode, stack: Stack, m: Measurements, variant: GatewayVariant
) -> None:
    gateway, base_url = stack.start_gateway(env=variant.env)
    wait_http_ok(f"{base_url}/readyz", 60, gateway)
    default = variant == default_gateway()
    if default:
        m.gateway_idle_rss_mb = gateway_load.rss_mb(gateway.pid)
    try:
        asyncio.run(
            gateway_load.submissions(
                base_url, MODEL, SUBMIT_IMAGE, jobs=GATEWAY_WARM_UP, concurrency=64
            )
        )
        groups = {
            "gateway": process_tree(gateway.pid),
            "broker": broker_pids(node),
            "load generator": [os.getpid()],
        }
        load = ForeignLoad()
        meter = CpuMeter(groups)
        result = asyncio.run(
            gateway_load.submissions(
                base_url,
                MODEL,
                SUBMIT_IMAGE,
                jobs=options.submissions,
                concurrency=64,
                max_seconds=options.max_seconds / 2,
            )
        )
        m.submits[variant] = GatewaySubmits(result, meter.per_job_ms(result.accepted), load.cores())
        log.info(
            "gateway alone (%s): %.0f submissions/s accepted, %.2f ms of gateway CPU each",
            variant.label,
            result.rate,
            m.submits[variant].cpu_ms["gateway"],
        )
        if default and result.job_ids:
            m.long_polls = asyncio.run(
                gateway_load.hold_long_polls(
                    base_url, result.job_ids, count=options.long_polls, gateway_pid=gateway.pid
                )
            )
            log.info(
                "gateway alone: %d long-polls held, RSS %.0f MiB",
                m.long_polls.held,
                m.long_polls.rss_held_mb,
            )
    finally:
        gateway.terminate()
        purged = asyncio.run(amqp_load.purge_requests(node.url))
        log.info("purged %d queued jobs", purged)


def measure_fairness(options: Options, stack: Stack, m: Measurements) -> None:
    """The shares a gateway gives each client by default (the other phases turn them off:
    their load generator is one address standing for many clients)."""
    with m.phase(FAIRNESS_PHASE):
        clients = options.concurrency
        defaults = ClientLimits()
        gateway, base_url = stack.start_gateway(
            env={
                "IMGQ_GALLERY_DIR": str(options.images),
                # The load generator stands for many clients, each naming its own address.
                "IMGQ_TRUSTED_PROXIES": "127.0.0.1",
                "IMGQ_CLIENT_JOBS": str(defaults.jobs),
                "IMGQ_CLIENT_RATE": f"{defaults.rate:g}",
                "IMGQ_CLIENT_WAITS": str(defaults.waits),
            }
        )
        replicas: list[ManagedProcess] = []
        try:
            wait_http_ok(f"{base_url}/readyz", 60, gateway)
            names = [p.name for p in image_files(options.images)]
            replicas = _start_replicas(stack, options, options.replicas, base_url, "fair-replica")
            asyncio.run(
                fairness.one_client(
                    base_url,
                    MODEL,
                    names,
                    fairness.client(0),
                    jobs=2 * clients,
                    concurrency=clients,
                )
            )
            m.fairness = asyncio.run(
                fairness.measure(
                    base_url,
                    MODEL,
                    names,
                    clients=clients,
                    jobs=options.jobs,
                    polite_jobs=POLITE_JOBS,
                    max_seconds=options.max_seconds,
                )
            )
            log.info(
                "shares: one client %.1f jobs/s, %d clients %.1f jobs/s",
                m.fairness.alone.throughput,
                clients,
                m.fairness.many.throughput,
            )
        finally:
            for replica in replicas:
                replica.terminate()
            gateway.terminate()


def measure_log(options: Options, node: BrokerNode, stack: Stack, m: Measurements) -> None:
    """No replica, no client: a gateway and the event log, written here as fast as the broker
    takes it."""
    with m.phase(LOG_PHASE):
        for rate in log_rate.measure(
            node,
            stack,
            jobs=options.log_jobs,
            live_jobs=options.live_log_jobs,
            batch=options.batch,
        ):
            m.log_rates.append(rate)
            log.info(
                "event log, %s: %d events replayed at %.0f/s (%.0f per core-second)",
                rate.framing,
                rate.events,
                rate.replay_rate,
                rate.replay_per_core_second,
            )


def measure_cluster(options: Options, log_dir: Path, m: Measurements) -> None:
    """The same HTTP run as phase 2's, on a three-node cluster (queues with three copies)."""
    with m.phase(CLUSTER_PHASE):
        brokers = start_cluster(3)
        (log_dir / "cluster").mkdir(exist_ok=True)
        stack = Stack(brokers.url, log_dir / "cluster", broker_urls=tuple(brokers.urls))
        try:
            gateway, base_url = stack.start_gateway(env={"IMGQ_GALLERY_DIR": str(options.images)})
            wait_http_ok(f"{base_url}/readyz", 60, gateway)
            _start_replicas(stack, options, options.replicas, base_url, "cluster-replica")
            names = [p.name for p in image_files(options.images)]
            _warm_up(options, base_url, names)
            m.http_cluster = _http_run(options, base_url, names)
            log.info("HTTP on a three-node cluster: %.1f jobs/s", m.http_cluster.throughput)
        finally:
            stack.stop()
            brokers.stop()


def cores() -> int:
    return os.cpu_count() or 1
