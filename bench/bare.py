"""The bare model, measured in subprocesses started side by side (the parent never loads torch).

Also a command of its own, to compare runtimes and batch sizes on this machine::

    python -m bench.bare --images ../shared/imagenet-sample --runtime torch --runtime onnxruntime \
        --batch 1 --batch 4 --processes 1

prints one line per runtime and batch size (images/s summed over the processes, which run side
by side with ``--threads`` each), and the cost of decoding and preprocessing alone.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from compose.stack import REPO

_READY = "READY"
_RESULT = "RESULT "


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    model: str = "efficientnet_lite0"
    threads: int = 1  # 0: torch's default (one per core)
    batch: int = 1
    eager: bool = False  # the plain eager torch module (whatever the runtime says)
    # auto | onnxruntime | torch, as IMGQ_RUNTIME: auto is what a replica here would run.
    runtime: str = "auto"
    # Decode and preprocess only: what is left of an image's cost without the forward pass.
    preprocess_only: bool = False

    def describe(self) -> str:
        threads = "default threads" if self.threads == 0 else f"{self.threads} thread(s)"
        if self.preprocess_only:
            graph = "decode and preprocess only"
        elif self.eager:
            graph = "torch eager"
        elif self.runtime == "torch":
            graph = "torch, frozen, channels-last"
        else:
            graph = f"runtime {self.runtime}"
        return f"{threads}, {graph}, batch {self.batch}"


@dataclass(frozen=True, slots=True)
class BareResult:
    processes: int
    images_per_s: float  # summed over the processes
    per_image_ms: dict[str, float]  # median per image, for per-image runs
    runtime: str = ""  # what the (first) worker ran, as it reported it
    # CPU milliseconds per image, all its threads, averaged over the processes: unlike the
    # throughput, it holds on a machine that other work shares.  None for per-image runs.
    cpu_ms_per_image: float | None = None


def _command(spec: WorkerSpec, images: Path, seconds: float, per_image: int) -> list[str]:
    command = [sys.executable, "-m", "bench.model_worker", "--model", spec.model]
    command += ["--images", str(images), "--threads", str(spec.threads)]
    command += ["--batch", str(spec.batch), "--seconds", str(seconds)]
    command += ["--per-image", str(per_image), "--runtime", spec.runtime]
    command += (["--eager"] if spec.eager else []) + (
        ["--preprocess-only"] if spec.preprocess_only else []
    )
    return command


def _env(spec: WorkerSpec) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.pop(name, None)
        if spec.threads:
            # As compose.stack does for replicas: OpenMP reads these before torch does.
            env[name] = str(spec.threads)
    return env


def _read_line(process: subprocess.Popen[str], prefix: str) -> str:
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith(prefix):
            return line[len(prefix) :].strip()
    raise RuntimeError(f"model worker exited (code {process.wait()}) before {prefix.strip()}")


def run_together(
    specs: Sequence[WorkerSpec],
    images: Path,
    log_dir: Path,
    *,
    seconds: float,
    per_image: int = 0,
    timeout: float = 300.0,
) -> BareResult:
    """Start one process per spec, wait until all are warm, then measure them all at once."""
    processes: list[subprocess.Popen[str]] = []
    with open(log_dir / "model-workers.log", "a") as log:
        for spec in specs:
            processes.append(
                subprocess.Popen(
                    _command(spec, images, seconds, per_image),
                    cwd=REPO,
                    env=_env(spec),
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=log,
                    text=True,
                )
            )
    # A stuck worker must not hang the benchmark.
    watchdog = threading.Timer(timeout, _kill_all, (processes,))
    watchdog.start()
    try:
        for process in processes:
            _read_line(process, _READY)
        for process in processes:
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        results = [json.loads(_read_line(process, _RESULT)) for process in processes]
    finally:
        watchdog.cancel()
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.wait()
    per_image_ms: dict[str, float] = {}
    for result in results:
        per_image_ms.update(result.get("per_image_ms", {}))
    timed = [r for r in results if r.get("images") and "cpu_seconds" in r]
    return BareResult(
        processes=len(specs),
        images_per_s=sum(r["images"] / r["seconds"] for r in results if "images" in r),
        per_image_ms=per_image_ms,
        runtime=str(results[0].get("runtime", "")) if results else "",
        cpu_ms_per_image=(
            1000 * sum(r["cpu_seconds"] for r in timed) / sum(r["images"] for r in timed)
            if timed
            else None
        ),
    )


def _kill_all(processes: Sequence[subprocess.Popen[str]]) -> None:
    for process in processes:
        process.kill()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bare")
    parser.add_argument("--images", type=Path, required=True, help="a folder of photos")
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--runtime", action="append", help="repeatable; default: torch and auto")
    parser.add_argument("--batch", type=int, action="append", help="repeatable; default: 1")
    parser.add_argument("--threads", type=int, default=1, help="per process")
    parser.add_argument("--processes", type=int, default=1, help="side by side")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    runtimes = args.runtime or ["torch", "auto"]
    batches = args.batch or [1]
    specs = [
        WorkerSpec(args.model, args.threads, batch, runtime=runtime)
        for runtime in runtimes
        for batch in batches
    ]
    specs += [WorkerSpec(args.model, args.threads, 1, preprocess_only=True)]
    with tempfile.TemporaryDirectory() as log_dir:
        for spec in specs:
            result = run_together(
                [spec] * args.processes, args.images, Path(log_dir), seconds=args.seconds
            )
            rate = result.images_per_s
            print(
                f"{args.processes} x {spec.describe()}: {rate:.1f} images/s "
                f"({1000 * args.processes / rate:.2f} ms an image per process)"
                + (f"  [{result.runtime}]" if result.runtime != "none" else ""),
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
