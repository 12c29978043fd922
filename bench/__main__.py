"""Measure imgq on this machine and write the table: ``python -m bench``.

Starts its own private RabbitMQ node, gateways and classifier replicas (nothing else is
touched), measures the bare model in subprocesses beside them, and writes one Markdown table,
with every target and whether it was met, to docs/benchmarks.md (and a bar chart beside it).
Loopback only; every request loop is bounded.  About 5 minutes on 2 cores; --quick: about 2.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import platform
import shlex
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

from bench import machine, plot, report, suite, summary
from bench.photos import LabelsError, image_files, read_labels
from compose.broker import BrokerError, start_node
from compose.stack import REPO, Stack
from shared.catalog import CATALOG

log = logging.getLogger("imgq.bench")

DEFAULT_IMAGES = REPO.parent / "shared" / "imagenet-sample"
DEFAULT_OUT = REPO / "docs" / "benchmarks.md"
# How much of another workload may be running before the figures say more about it than us.
BUSY_WARNING = 0.25


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "--images needs a folder of photos with a labels.csv beside them (columns file and "
            "class_index: the ImageNet class index, i.e. the position of the photo's WordNet ID "
            "in the sorted list of the 1000 IDs).  The file names (<wnid>_<name>.JPEG) are not "
            "enough on their own: no list of the 1000 WordNet IDs is available offline here."
        ),
    )
    parser.add_argument(
        "--replicas", type=int, default=None, help="classifier replicas (default: one per core)"
    )
    parser.add_argument(
        "--jobs", type=int, default=None, help="jobs per throughput run (default 600; quick 120)"
    )
    parser.add_argument(
        "--concurrency", type=int, default=16, help="concurrent clients in throughput runs"
    )
    parser.add_argument(
        "--images",
        type=Path,
        default=DEFAULT_IMAGES,
        help="labelled photos (default ../shared/imagenet-sample beside the checkout)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the Markdown file to write")
    parser.add_argument(
        "--batch-size", type=int, default=None, help="IMGQ_BATCH_SIZE for the replicas"
    )
    parser.add_argument(
        "--batch-wait-ms", type=float, default=None, help="IMGQ_BATCH_WAIT_MS for the replicas"
    )
    parser.add_argument(
        "--long-polls", type=int, default=None, help="concurrent long-polls (default 5000)"
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="first wait up to this long for other work on the machine to stop",
    )
    parser.add_argument(
        "--no-cluster", action="store_true", help="skip the three-node cluster phase"
    )
    parser.add_argument(
        "--only",
        type=_phases,
        default=PHASES,
        metavar="PHASES",
        help=f"run only these phases, comma-separated, of: {', '.join(PHASES)} (the table "
        "lists what they measured; write it with --out elsewhere than the reference file)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="fewer jobs, shorter runs and 1,000 long-polls: a smoke test, not figures to keep",
    )
    args = parser.parse_args(argv)
    if args.replicas is not None and args.replicas < 1:
        parser.error("--replicas must be at least 1")
    if args.jobs is not None and args.jobs < 1:
        parser.error("--jobs must be at least 1")
    if args.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    if not args.images.is_dir() or not image_files(args.images):
        parser.error(f"--images {args.images}: not a folder of photos")
    try:
        read_labels(args.images)
    except LabelsError as exc:
        parser.error(str(exc))
    return args


PHASES = ("bare", "service", "gateway", "shares", "log", "cluster")


def _phases(text: str) -> tuple[str, ...]:
    chosen = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in chosen if name not in PHASES]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"phases are {', '.join(PHASES)}; got {text!r}")
    return chosen


def options_from(args: argparse.Namespace) -> suite.Options:
    quick = bool(args.quick)
    return suite.Options(
        replicas=args.replicas or suite.cores(),
        jobs=args.jobs or (120 if quick else 600),
        concurrency=args.concurrency,
        images=args.images.resolve(),
        bare_seconds=4.0 if quick else 12.0,
        submissions=1500 if quick else 6000,
        long_polls=args.long_polls or (1000 if quick else 5000),
        accuracy_models=tuple(CATALOG),
        max_seconds=15.0 if quick else 40.0,
        batch_size=args.batch_size,
        batch_wait_ms=args.batch_wait_ms,
        log_jobs=10_000 if quick else 33_334,
        live_log_jobs=5_000 if quick else 20_000,
    )


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def wait_quiet(patience: float) -> float:
    """Cores in use just before the run, after waiting up to ``patience`` s for fewer."""
    deadline = time.monotonic() + patience
    busy = machine.busy_cores()
    while busy > BUSY_WARNING and time.monotonic() < deadline:
        log.info("waiting for the machine to quieten (%.2f cores in use)", busy)
        time.sleep(5)
        busy = machine.busy_cores()
    return busy


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # The load generator is one client (127.0.0.1) standing for many: no per-client shares.
    os.environ.setdefault("IMGQ_CLIENT_RATE", "0")
    os.environ.setdefault("IMGQ_CLIENT_JOBS", "0")
    os.environ.setdefault("IMGQ_CLIENT_WAITS", "100000")
    options = options_from(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [bench] %(message)s")
    for chatty in ("aio_pika", "aiormq"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    command = "python -m bench " + shlex.join(sys.argv[1:] if argv is None else argv)
    started = time.monotonic()
    load_before = machine.load_average()
    busy = wait_quiet(args.wait_quiet)
    if busy > BUSY_WARNING:
        log.warning("the machine is already busy (%.2f cores in use): figures will be low", busy)
    machine.raise_open_files_limit()
    m = suite.Measurements()

    log_dir = Path(tempfile.mkdtemp(prefix="imgq-bench-"))
    log.info("logs in %s", log_dir)
    if "bare" in args.only:
        suite.measure_bare(options, log_dir, m)
    try:
        node = start_node()
    except BrokerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    stack = Stack(node.url, log_dir)
    try:
        if "service" in args.only:
            suite.measure_service(options, node, stack, m)
        if "gateway" in args.only:
            suite.measure_gateway(options, node, stack, m)
        if "shares" in args.only:
            suite.measure_fairness(options, stack, m)
        if "log" in args.only:
            suite.measure_log(options, node, stack, m)
    finally:
        stack.stop()
        node.stop()
    if "cluster" in args.only and not args.no_cluster:
        try:
            suite.measure_cluster(options, log_dir, m)
        except (BrokerError, RuntimeError, TimeoutError) as exc:
            m.notes.append(f"three-node cluster phase failed: {exc}")

    reference = options.images == DEFAULT_IMAGES.resolve()
    rows = summary.rows(options, m, reference)
    chart = args.out.with_suffix(".png")
    plot.bar_chart(
        f"Throughput, {suite.MODEL}, {suite.cores()} cores",
        summary.throughput_bars(options, m),
        "per s",
        chart,
    )
    info = report.RunInfo(
        command=command,
        date=datetime.datetime.now().astimezone().isoformat(timespec="minutes"),
        cores=suite.cores(),
        torch_version=_version("torch"),
        runtime=f"{m.bare_runtime} (onnxruntime {_version('onnxruntime')})",
        python_version=platform.python_version(),
        duration_s=time.monotonic() - started,
        load_average=f"{load_before} / {machine.load_average()}",
    )
    text = report.document(info, rows, [*m.notes, *summary.notes(options, m)], chart.name)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(report.results_table(rows))
    print(f"written: {args.out} and {chart}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
