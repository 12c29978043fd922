"""From measurements to the table's rows, each target checked against its measured ratio."""

from __future__ import annotations

from collections.abc import Sequence

from bench.fairness import FLOOD_REQUESTS
from bench.load import LoadResult, replica_gaps
from bench.log_rate import ONE_A_MESSAGE, UNDER_LOAD
from bench.report import Row, Target
from bench.stats import Latency, percentile
from bench.suite import (
    BARE_PHASE,
    CLUSTER_PHASE,
    FAIRNESS_PHASE,
    LOG_PHASE,
    MODEL,
    Measurements,
    Options,
    default_gateway,
    replica_counts,
    service_phase,
)
from compose.stack import threads_per_replica
from gateway.clients import ClientLimits

# Issue 19's, each on the layout with one replica per core: what the per-job costs below allow
# on 2 cores shared by the replicas, the gateway, the broker and the load generator.
E2E_TARGETS = {"HTTP": Target(">=", 0.75, " × bare"), "AMQP": Target(">=", 0.8, " × bare")}
# Issue 19's: a job costs less than its model.  CPU per job of each part of the service.
REPLICA_CPU = Target("<=", 1.1, " × bare")
GATEWAY_CPU = {"HTTP": Target("<=", 1.0, " core-ms"), "AMQP": Target("<=", 0.5, " core-ms")}
BROKER_CPU = Target("<=", 1.5, " core-ms")
# Issue 19: every gateway applies every event of the log, so this bounds a deployment.
LOG_APPLY = Target(">=", 20_000, " events/s")
# Issue 18: the command line on a folder keeps up with many HTTP clients.
CLI_TARGET = Target(">=", 0.9, " × HTTP")
RUNTIME_SPEEDUP = Target(">=", 2.5, " × TorchScript")
ADDED_LATENCY = Target("<=", 3, " ms")
PLUMBING = Target("<=", 4, " core-ms")
REPLICA_RSS = Target("<=", 400, " MB")
SUBMISSIONS = Target(">=", 2000, "/s")
# Issue 19: the gateway's CPU per job in the throughput runs.
GATEWAY_CPU = {"HTTP": Target("<=", 1.0, " core-ms"), "AMQP": Target("<=", 0.5, " core-ms")}
# What 2,000 submissions a second on one core allow the gateway.
SUBMISSION_CPU = Target("<=", 0.5, " core-ms")
LONG_POLLS = Target(">=", 5000)
GATEWAY_RSS = Target("<", 200, " MB")
# Issue 16's: a client alone gets the fleet; a polite client is not starved by a bulk one.
ONE_CLIENT = Target(">=", 0.95, " × 16 clients")
POLITE_LATENCY = Target("<=", 2, " × alone")
# Lite0's top-1 on the 100-photo ImageNet sample with the reference pipeline (its README).
SAMPLE_TOP1 = Target(">=", 0.89)
# bf16 is worth offering only if it keeps fp32's answers and is clearly faster: it agreed on
# 198 of 200 photos and ran 1.7x fp32 on an AVX-512 BF16 machine (Lite0, 1 thread, batch 4).
BF16_AGREEMENT = Target(">=", 0.95)
BF16_SPEEDUP = Target(">=", 1.5, " × fp32")
# Cores of other work during a phase above which its figures say more about that work.
BUSY = 0.25


def caveat(m: Measurements, *phases: str) -> str:
    """A warning for a verdict resting on phases during which the machine was busy."""
    busy = [m.foreign_cores[p] for p in phases if m.foreign_cores.get(p, 0.0) > BUSY]
    return f"machine busy: {max(busy):.1f} cores of other work" if busy else ""


_PLURALS = {"replica": "replicas", "process": "processes"}


def layout(replicas: int, noun: str = "replica") -> str:
    threads = threads_per_replica(replicas)
    nouns = noun if replicas == 1 else _PLURALS[noun]
    return f"{replicas} {nouns} × {threads} thread{'s' if threads > 1 else ''}"


def _ratio(value: float | None, reference: float | None) -> float | None:
    if value is None or not reference:
        return None
    return value / reference


def _fmt(value: float | None, spec: str = ".2f", suffix: str = "") -> str:
    return "—" if value is None else f"{value:{spec}}{suffix}"


def _jobs(result: LoadResult) -> str:
    failed = f", {result.failed} failed" if result.failed else ""
    return f"{result.throughput:.1f} jobs/s ({result.jobs} jobs{failed})"


def _latency(result: LoadResult) -> str:
    return str(Latency.of_seconds(result.latencies)) if result.latencies else "—"


def added_latency_ms(result: LoadResult, bare_ms: dict[str, float]) -> list[float]:
    """Per job: its end-to-end latency minus the bare model's time for the same image."""
    return [s * 1000 - bare_ms[name] for name, s in result.per_image if name in bare_ms]


def bare_rows(options: Options, m: Measurements) -> list[Row]:
    batch = options.batch
    rows = [
        Row(
            "bare model: naive baseline",
            f"{MODEL}, 1 process, torch eager, batch 1, torch's default threads",
            _fmt(m.bare_naive, ".1f", " images/s"),
            ratio="1.00 × naive",
        )
    ]
    for replicas in replica_counts(options):
        summed = ", summed" if replicas > 1 else ""
        reference = m.bare_torch.get(replicas)
        rows.append(
            Row(
                "bare model, frozen TorchScript",
                f"{layout(replicas, 'process')}, torch, frozen + channels-last, batch {batch}"
                + summed,
                _fmt(reference, ".1f", " images/s"),
                ratio=_fmt(_ratio(reference, m.bare_naive), ".2f", " × naive"),
                caveat=caveat(m, BARE_PHASE),
            )
        )
        value = m.bare.get(replicas)
        speedup = _ratio(value, reference)
        checked = replicas == options.replicas
        rows.append(
            Row(
                "bare model" + (" (reference ceiling)" if checked else ""),
                f"{layout(replicas, 'process')}, {m.bare_runtime}, batch {batch}{summed}",
                _fmt(value, ".1f", " images/s"),
                ratio=_fmt(speedup, ".2f", " × TorchScript"),
                target=RUNTIME_SPEEDUP if checked else None,
                value=speedup if checked else None,
                caveat=caveat(m, BARE_PHASE),
            )
        )
    if m.preprocess_ms is not None:
        rows.append(
            Row(
                "decode + preprocess alone",
                "1 process × 1 thread, each photo in turn: JPEG draft decode, crop-region "
                "resize, normalise (numpy)",
                f"{m.preprocess_ms:.2f} ms per image",
                caveat=caveat(m, BARE_PHASE),
            )
        )
    per_image = list(m.bare_per_image_ms.values())
    if per_image:
        rows.append(
            Row(
                "bare model: one image at a time",
                f"1 process × {options.threads} thread{'s' if options.threads > 1 else ''}, "
                "batch 1, each photo twice (median): one replica's share of the cores",
                f"{percentile(per_image, 50):.1f} ms per image (p50)",
                latency=f"{percentile(per_image, 50):.0f} / {percentile(per_image, 95):.0f} / "
                f"{percentile(per_image, 99):.0f}",
            )
        )
    return rows


def precision_rows(m: Measurements) -> list[Row]:
    """bf16 against fp32: each a target row; "not measured" where the CPU cannot run bf16."""
    result = m.precision
    if result is None:
        return []
    setup = (
        f"{result.model}, 1 process × {result.threads} thread, batch {result.batch}, the same "
        f"{result.photos} photos through IMGQ_PRECISION=fp32 (ONNX Runtime) and bf16"
    )
    if not result.ran_bf16:
        why = (
            "this CPU has no bfloat16 instructions: bf16 ran fp32"
            if result.cpu_bf16 is None
            else "bf16 ran fp32 (OpenVINO is not installed)"
        )
        return [
            Row("bf16 vs fp32: top-1 agreement", setup, f"— ({why})", target=BF16_AGREEMENT),
            Row("bf16 vs fp32: speed-up", setup, f"— ({why})", target=BF16_SPEEDUP),
        ]
    busy = caveat(m, BARE_PHASE)
    return [
        Row(
            "bf16 vs fp32: top-1 agreement",
            f"{setup} ({result.bf16_runtime}, {result.cpu_bf16})",
            f"same top-1 on {result.same_top1}/{result.photos} photos, max logit difference "
            f"{result.max_logit_difference:.2f}",
            target=BF16_AGREEMENT,
            value=result.agreement,
        ),
        Row(
            "bf16 vs fp32: speed-up",
            f"{setup}: forward pass only, the two in alternating slices",
            f"{result.bf16_images_per_s:.1f} vs {result.fp32_images_per_s:.1f} images/s",
            ratio=_fmt(result.speedup, ".2f", " × fp32"),
            target=BF16_SPEEDUP,
            value=result.speedup,
            caveat=busy,
        ),
    ]


def model_core_ms(m: Measurements, replicas: int) -> float | None:
    """The bare model's CPU per image in this layout: what a job cannot cost less than.  As its
    processes measured it, else from its throughput (as if it had had every core to itself)."""
    if replicas in m.bare_cpu_ms:
        return m.bare_cpu_ms[replicas]
    images_per_s = m.bare.get(replicas)
    if not images_per_s:
        return None
    return 1000 * replicas * threads_per_replica(replicas) / images_per_s


def plumbing_ms(m: Measurements, key: str, replicas: int) -> float | None:
    """CPU per job spent on anything but the model: gateway + broker + the replicas' own
    non-model work (the load generator, a client, is left out)."""
    cpu = m.cpu_per_job.get(key)
    model = model_core_ms(m, replicas)
    if not cpu or model is None:
        return None
    service = sum(ms for part, ms in cpu.items() if part != "load generator")
    return service - model


def service_rows(options: Options, m: Measurements) -> list[Row]:
    rows = []
    for path, results in (("HTTP", m.http), ("AMQP", m.amqp)):
        for replicas in replica_counts(options):
            result = results.get(replicas)
            if result is None:
                continue
            ratio = _ratio(result.throughput, m.bare.get(replicas))
            checked = replicas == options.replicas
            how = (
                "POST then long-poll ?wait=30"
                if path == "HTTP"
                else "publish with confirms, reply_to queue"
            )
            rows.append(
                Row(
                    f"end to end, {path}",
                    f"{layout(replicas)}, {options.concurrency} clients, {how}",
                    _jobs(result),
                    latency=_latency(result),
                    ratio=_fmt(ratio, ".2f", " × bare"),
                    target=E2E_TARGETS[path] if checked else None,
                    value=ratio if checked else None,
                    caveat=caveat(m, BARE_PHASE, service_phase(replicas)),
                )
            )
    rows += cli_rows(options, m)
    for path in ("HTTP", "AMQP"):
        replicas = options.replicas
        plumbing = plumbing_ms(m, f"{path}, {replicas}", replicas)
        cpu = m.cpu_per_job.get(f"{path}, {replicas}", {})
        split = ", ".join(f"{part} {ms:.1f}" for part, ms in cpu.items())
        rows.append(
            Row(
                f"plumbing per job, {path}",
                f"{layout(replicas)}: CPU of gateway + broker + replicas per job, less the bare "
                f"model's {_fmt(model_core_ms(m, replicas), '.1f')} core-ms per image "
                f"(split: {split})",
                f"{_fmt(plumbing, '.1f')} core-ms",
                target=PLUMBING,
                value=plumbing,
                caveat=caveat(m, service_phase(replicas)),
            )
        )
    rows += cpu_rows(options, m)
    for path, low in (("HTTP", m.http_low_load), ("AMQP", m.amqp_low_load)):
        if low is None:
            continue
        added = added_latency_ms(low, m.bare_per_image_ms)
        p50 = percentile(added, 50) if added else None
        rows.append(
            Row(
                f"low load, {path}",
                f"one job at a time, each photo once, {layout(options.replicas)}",
                f"{_fmt(p50, '+.1f')} ms over the bare model (p50 of per-photo differences)",
                latency=_latency(low),
                target=ADDED_LATENCY,
                value=p50,
                caveat=caveat(m, service_phase(options.replicas)),
            )
        )
    if m.replica_rss_mb:
        worst = max(m.replica_rss_mb)
        rows.append(
            Row(
                "replica memory",
                f"VmRSS of each of {len(m.replica_rss_mb)} replicas after the runs, every "
                f"catalogue model loaded ({m.bare_runtime})",
                ", ".join(f"{mb:.0f}" for mb in m.replica_rss_mb) + " MB",
                target=REPLICA_RSS,
                value=worst,
            )
        )
    if m.http_cluster is not None:
        single = m.http.get(options.replicas)
        rows.append(
            Row(
                "end to end, HTTP, three-node cluster",
                f"{layout(options.replicas)}, {options.concurrency} clients, queues and event "
                "log with three copies (the single-node row above is the same run's reference)",
                _jobs(m.http_cluster),
                latency=_latency(m.http_cluster),
                ratio=_fmt(
                    _ratio(m.http_cluster.throughput, single.throughput if single else None),
                    ".2f",
                    " × one node",
                ),
                caveat=caveat(m, CLUSTER_PHASE),
            )
        )
    return rows


def cpu_rows(options: Options, m: Measurements) -> list[Row]:
    """Each part's CPU per job in the throughput runs with one replica per core, against its
    target: the replicas against the bare model in the same layout, the gateway and the broker
    in core-ms."""
    rows = []
    replicas = options.replicas
    model = model_core_ms(m, replicas)
    for path in ("HTTP", "AMQP"):
        cpu = m.cpu_per_job.get(f"{path}, {replicas}")
        if not cpu:
            continue
        busy = caveat(m, service_phase(replicas))
        ratio = _ratio(cpu["replicas"], model)
        rows += [
            Row(
                f"replicas, CPU per job, {path}",
                f"{layout(replicas)}: the replicas' CPU (from /proc, over the run) per job, "
                f"against the bare model's {_fmt(model, '.1f')} core-ms per image in the same "
                "layout" + _loop_share(m, f"{path}, {replicas}", cpu["replicas"]),
                f"{cpu['replicas']:.1f} core-ms",
                ratio=_fmt(ratio, ".2f", " × bare"),
                target=REPLICA_CPU,
                value=ratio,
                caveat=busy,
            ),
            Row(
                f"gateway, CPU per job, {path}",
                f"{layout(replicas)}: the gateway's CPU per job"
                + (
                    " (the submission, its long-poll, and following the log)"
                    if path == "HTTP"
                    else " (following the log: the jobs come straight to the broker)"
                ),
                f"{cpu['gateway']:.2f} core-ms",
                target=GATEWAY_CPU[path],
                value=cpu["gateway"],
                caveat=busy,
            ),
            Row(
                f"broker, CPU per job, {path}",
                f"{layout(replicas)}: the broker's CPU (its Erlang VM) per job"
                + _log_written(m, f"{path}, {replicas}"),
                f"{cpu['broker']:.2f} core-ms",
                target=BROKER_CPU,
                value=cpu["broker"],
                caveat=busy,
            ),
        ]
    return rows


def _loop_share(m: Measurements, key: str, replicas_ms: float) -> str:
    loop = m.loop_per_job.get(key, {}).get("replicas")
    if loop is None:
        return ""
    return (
        f" (their event loops {loop:.1f}: the broker client, events, acks, logs; inference "
        f"threads {replicas_ms - loop:.1f})"
    )


def _log_written(m: Measurements, key: str) -> str:
    stats = m.log_stats.get(key)
    if stats is None or not stats.jobs:
        return ""
    request = "its request (in, out, acked)" if key.startswith("HTTP") else "its request and reply"
    return (
        f": {request} and {stats.messages_per_job:.2f} messages of the event log, "
        f"{stats.events_per_message:.1f} events each"
    )


def log_rows(m: Measurements) -> list[Row]:
    """Events of the event log one gateway applies a second: replayed, and live."""
    rows = []
    busy = caveat(m, LOG_PHASE)
    for rate in m.log_rates:
        jobs = rate.events // 3
        if rate.framing == UNDER_LOAD:
            how = (
                f"{rate.messages:,} messages, framed as a busy service writes them (a replica "
                "message: a batch's results with the next batch's \"started\"; a gateway's: "
                'a batch\'s worth of "queued")'
            )
        else:
            how = f"{rate.messages:,} messages, one event each, as an idle service writes them"
        rows.append(
            Row(
                "event log: replay, one gateway"
                + (", one event a message" if rate.framing == ONE_A_MESSAGE else ""),
                f"a fresh gateway replays {rate.events:,} events ({jobs:,} jobs' queued, started "
                f"and succeeded) in {how}, timed to its readiness, less an empty log's",
                f"{rate.replay_rate:,.0f} events/s ({rate.replay_seconds:.1f} s; "
                f"{rate.replay_per_core_second:,.0f} events per gateway core-second)",
                target=LOG_APPLY if rate.framing == UNDER_LOAD else None,
                value=rate.replay_rate if rate.framing == UNDER_LOAD else None,
                caveat=busy,
            )
        )
        if rate.live_events:
            rows.append(
                Row(
                    "event log: live, one gateway",
                    f"one gateway, caught up, follows {rate.live_events:,} more events "
                    f"({rate.live_messages:,} messages, framed as above) written as fast as the "
                    f"broker takes them: {rate.live_rate:,.0f} events/s here, the writer's pace "
                    "on these shared cores; the result is what the gateway's CPU per event "
                    "allows on its one core",
                    f"{rate.live_per_core_second:,.0f} events/s (per gateway core-second)",
                    target=LOG_APPLY,
                    value=rate.live_per_core_second,
                    caveat=busy,
                )
            )
    return rows


def cli_rows(options: Options, m: Measurements) -> list[Row]:
    if m.cli is None:
        return []
    http = m.http.get(options.replicas)
    ratio = _ratio(m.cli.throughput, http.throughput if http else None)
    return [
        Row(
            "end to end, imgq command",
            f"{layout(options.replicas)}, `imgq classify FOLDER --out FILE` on "
            f"{m.cli.jobs + m.cli.failed} distinct photos (one process, batches of the "
            "server's size, 256 in flight), timed from its start to its exit",
            _jobs(m.cli),
            ratio=_fmt(ratio, ".2f", " × HTTP"),
            target=CLI_TARGET,
            value=ratio,
            caveat=caveat(m, service_phase(options.replicas)),
        )
    ]


def gateway_rows(options: Options, m: Measurements) -> list[Row]:
    rows = []
    reference = next(iter(m.submits.values()), None)
    default = default_gateway()
    for variant, run in m.submits.items():
        result = run.result
        checked = variant == default or variant.processes > 1
        rejected = f", {result.rejected} answered 503" if result.rejected else ""
        busy = (
            f"machine busy: {run.foreign_cores:.1f} cores of other work"
            if run.foreign_cores > BUSY
            else ""
        )
        ratio = _ratio(result.rate, reference.result.rate if reference else None)
        reference_label = next(iter(m.submits)).label
        rows.append(
            Row(
                "gateway alone: submissions accepted",
                f"{variant.label}{' (the default)' if variant == default else ''}, no "
                f"replicas, 64 connections, {result.accepted + result.rejected} POSTs, each "
                "202 after the broker's confirm",
                f"{result.rate:.0f}/s{rejected}",
                ratio=_fmt(ratio, ".2f", f" × {reference_label}"),
                target=SUBMISSIONS if checked else None,
                value=result.rate if checked else None,
                caveat=busy,
            )
        )
        cpu = run.cpu_ms
        rows.append(
            Row(
                "gateway alone: CPU per submission",
                f"{variant.label}: CPU of the gateway's processes per accepted submission "
                f"(the broker's {cpu.get('broker', 0.0):.2f}, the load generator's "
                f"{cpu.get('load generator', 0.0):.2f})",
                f"{cpu['gateway']:.2f} core-ms",
                target=SUBMISSION_CPU if variant == default else None,
                value=cpu["gateway"] if variant == default else None,
                caveat=busy,
            )
        )
    polls = m.long_polls
    if polls is not None:
        rows.append(
            Row(
                "gateway alone: concurrent long-polls",
                f"{polls.requested} × ?wait=30 on queued jobs, "
                f"opened in {polls.ramp_seconds:.1f} s",
                f"{polls.held} held ({polls.gateway_fds} open files in the gateway)",
                target=LONG_POLLS,
                value=polls.held,
            )
        )
        rows.append(
            Row(
                "gateway alone: memory while holding them",
                "VmRSS of the gateway process",
                f"{polls.rss_held_mb:.0f} MB (idle after start-up: "
                f"{_fmt(m.gateway_idle_rss_mb, '.0f')} MB)",
                target=GATEWAY_RSS,
                value=polls.rss_held_mb,
            )
        )
    return rows


def fairness_rows(options: Options, m: Measurements) -> list[Row]:
    shares = m.fairness
    if shares is None:
        return []
    busy = caveat(m, FAIRNESS_PHASE)
    where = f"{layout(options.replicas)}, default shares (IMGQ_CLIENT_JOBS {ClientLimits().jobs})"
    alone = _ratio(shares.alone.throughput, shares.many.throughput)
    p50 = {
        run: 1000 * percentile(result.latencies, 50) if result.latencies else None
        for run, result in (("alone", shares.polite_alone), ("flooded", shares.polite_flooded))
    }
    slower = _ratio(p50["flooded"], p50["alone"])
    flood = shares.flood
    return [
        Row(
            "shares: many clients",
            f"{where}, {shares.clients} clients (an address each), one job at a time each",
            _jobs(shares.many),
            latency=_latency(shares.many),
            caveat=busy,
        ),
        Row(
            "shares: one client alone",
            f"{where}, one client (one address), {shares.clients} requests at a time, just after "
            "the row above",
            _jobs(shares.alone),
            latency=_latency(shares.alone),
            ratio=_fmt(alone, ".2f", f" × {shares.clients} clients"),
            target=ONE_CLIENT,
            value=alone,
            caveat=busy,
        ),
        Row(
            "shares: a polite client alone",
            f"{where}, one job at a time, nothing else running",
            f"{_fmt(p50['alone'], '.0f')} ms (p50, {shares.polite_alone.jobs} jobs)",
            latency=_latency(shares.polite_alone),
            caveat=busy,
        ),
        Row(
            "shares: a polite client beside a bulk one",
            f"{where}, one job at a time, while a bulk client keeps {FLOOD_REQUESTS} requests "
            f"going, each 429 retried after its Retry-After ({flood.accepted} of its jobs "
            f"accepted meanwhile, {flood.refused} answered 429)",
            f"{_fmt(p50['flooded'], '.0f')} ms (p50, {shares.polite_flooded.jobs} jobs)",
            latency=_latency(shares.polite_flooded),
            ratio=_fmt(slower, ".2f", " × alone"),
            target=POLITE_LATENCY,
            value=slower,
            caveat=busy,
        ),
    ]


def accuracy_rows(options: Options, m: Measurements, reference_sample: bool) -> list[Row]:
    rows = []
    for result in m.accuracy:
        check = reference_sample and result.model == MODEL
        failed = f", {result.failed} failed" if result.failed else ""
        rows.append(
            Row(
                f"accuracy, {result.model}",
                f"{result.photos} labelled photos through the service (HTTP){failed}",
                f"top-1 {result.top1:.2f}, top-5 {result.top5:.2f}",
                target=SAMPLE_TOP1 if check else None,
                value=result.top1 if check else None,
            )
        )
    return rows


def rows(options: Options, m: Measurements, reference_sample: bool) -> Sequence[Row]:
    return [
        *bare_rows(options, m),
        *precision_rows(m),
        *service_rows(options, m),
        *gateway_rows(options, m),
        *log_rows(m),
        *fairness_rows(options, m),
        *accuracy_rows(options, m, reference_sample),
    ]


def throughput_bars(options: Options, m: Measurements) -> list[tuple[str, float, int]]:
    """(label, images or jobs per second, colour): bare model, then HTTP, then AMQP."""
    bars: list[tuple[str, float, int]] = []
    if m.bare_naive is not None:
        bars.append(("bare model, naive baseline", m.bare_naive, 0))
    for replicas in replica_counts(options):
        if replicas in m.bare_torch:
            bars.append(
                (f"bare, TorchScript, {layout(replicas, 'process')}", m.bare_torch[replicas], 0)
            )
        if replicas in m.bare:
            bars.append((f"bare model, {layout(replicas, 'process')}", m.bare[replicas], 0))
    for colour, (path, results) in enumerate((("HTTP", m.http), ("AMQP", m.amqp)), start=1):
        for replicas in replica_counts(options):
            if replicas in results:
                bars.append((f"{path}, {layout(replicas)}", results[replicas].throughput, colour))
    if m.cli is not None:
        bars.append((f"imgq command, {layout(options.replicas)}", m.cli.throughput, 3))
    return bars


def notes(options: Options, m: Measurements) -> list[str]:
    batch = (
        f"{options.batch} (the service's default)"
        if options.batch_size is None
        else str(options.batch)
    )
    wait = "default" if options.batch_wait_ms is None else f"{options.batch_wait_ms:g} ms"
    lines = [
        f"photos: {options.images} ({len(m.bare_per_image_ms)} files); throughput runs cycle "
        f"through them with {MODEL}, {options.jobs} jobs each after a warm-up of "
        f"{2 * options.concurrency}",
        f"replicas: IMGQ_BATCH_SIZE {batch}, IMGQ_BATCH_WAIT_MS {wait}; inference threads per "
        "replica = cores / replicas (compose.stack.threads_per_replica)",
        "end-to-end latency runs from just before the submit to the moment the client holds "
        "the result (HTTP: the long-poll's answer; AMQP: the reply on its reply_to queue); "
        "under load it includes the time queued behind the other clients' jobs",
        "the bare model runs the classifier's own classify_batch (decode, preprocess, forward, "
        "top-5) in subprocesses started together, before the broker starts; the per-photo "
        "times just before the low-load runs, with the replicas idle",
        "plumbing per job = CPU per job of the gateway, the broker and the replicas (from "
        "/proc, over the whole run) minus the bare model's CPU per image in the same layout (its "
        "processes' own CPU time); "
        "the load generator runs on the same cores and is shown in the split but not counted",
    ]
    for replicas in m.bare:
        lines.append(
            f"bare model, {layout(replicas, 'process')}: {_fmt(model_core_ms(m, replicas), '.1f')} "
            "core-ms per image (its processes' CPU time), the figure to hold the CPU per job of "
            "the service against"
        )
    if m.foreign_cores:
        phases = ", ".join(f"{name} {cores:.2f}" for name, cores in m.foreign_cores.items())
        lines.append(
            "other work on this shared machine, in cores used by processes the benchmark did "
            f"not start: {phases}.  Above {BUSY} the figures of that phase are low, ratios "
            "that involve it are skewed, and its verdicts say so"
        )
    for label, key, result in (
        *((f"HTTP, {layout(r)}", f"HTTP, {r}", x) for r, x in m.http.items()),
        *((f"AMQP, {layout(r)}", f"AMQP, {r}", x) for r, x in m.amqp.items()),
    ):
        cpu = m.cpu_per_job.get(key)
        if cpu:
            parts = ", ".join(f"{name} {ms:.1f}" for name, ms in cpu.items())
            lines.append(f"{label}: CPU ms per job: {parts} (total {sum(cpu.values()):.1f})")
        gaps = [g * 1000 for g in replica_gaps(result.spans)]
        if gaps:
            lines.append(
                f"{label}: each replica spent {percentile(gaps, 50):.1f} ms (p50; p95 "
                f"{percentile(gaps, 95):.1f} ms) between finishing a batch and starting the "
                "next (publishing and confirming results, acks, taking the next job), while "
                "jobs were waiting"
            )
        if result.errors:
            lines.append(f"{label}: {result.failed} failed, e.g. {result.errors[0]}")
    for path, low in (("HTTP", m.http_low_load), ("AMQP", m.amqp_low_load)):
        if low is not None and low.stages:
            to_replica, inference, back = (
                1000 * percentile([stage[i] for stage in low.stages], 50) for i in range(3)
            )
            bare = percentile(list(m.bare_per_image_ms.values()), 50) if m.bare_per_image_ms else 0
            lines.append(
                f"low load, {path}, where a job's time goes (p50 of each stage): {to_replica:.1f} "
                "ms from the submit to a replica starting it (the request in, the broker's "
                f"durable write of it, its delivery), {inference:.1f} ms of inference (the bare "
                f"model: {bare:.1f} ms), {back:.1f} ms from the inference's end to the client "
                "holding the result ("
                + (
                    "the results through the event log to the gateway, the long-poll's answer)"
                    if path == "HTTP"
                    else "the reply to its queue)"
                )
            )
    if m.cli is not None and m.cli.errors:
        lines.append(f"imgq command: {m.cli.failed} failed, e.g. {m.cli.errors[0]}")
    shares = m.fairness
    single = m.http.get(options.replicas)
    if shares is not None and single is not None and single.throughput:
        lines.append(
            f"shares: the one client alone made {shares.alone.throughput / single.throughput:.2f}"
            f" × the end-to-end HTTP row's {single.throughput:.1f} jobs/s ({options.concurrency} "
            "clients, shares off; an earlier phase, so less comparable than the side-by-side "
            "ratio in the table)"
        )
    if shares is not None:
        for label, result in (
            ("many clients", shares.many),
            ("one client alone", shares.alone),
            ("polite client alone", shares.polite_alone),
            ("polite client beside a bulk one", shares.polite_flooded),
        ):
            if result.errors:
                lines.append(f"shares, {label}: {result.failed} failed, e.g. {result.errors[0]}")
        if shares.flood.errors:
            lines.append(f"shares, the bulk client: errors, e.g. {shares.flood.errors[0]}")
    for variant, run in m.submits.items():
        if run.result.errors:
            lines.append(f"submissions, {variant.label}: errors, e.g. {run.result.errors[0]}")
    return lines
