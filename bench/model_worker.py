"""One bare-model measurement, in its own process: ``python -m bench.model_worker``.

The classifier's own code path (``classify_batch``: decode, preprocess, forward, top-5) with
nothing around it: no broker, no HTTP.  It loads the model the way a replica does (the same
runtime choice, the same model cache), warms up, prints ``READY``, waits for a line on stdin
so that several workers start measuring together, then runs for ``--seconds`` and prints
``RESULT`` and a JSON object.  ``--preprocess-only`` times decoding and preprocessing alone.
Only a worker on the torch runtime imports torch: the benchmark's parent never does, so it
never forks with torch loaded (forked children hung here).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from bench.photos import image_files
from classifier_service.inference import classify_batch, configure_threads, warm_up
from classifier_service.loaded import LoadedModel
from classifier_service.models import load_models
from classifier_service.preprocess import preprocess
from classifier_service.settings import ClassifierSettings, Runtime
from shared.catalog import CATALOG, ModelSpec
from shared.settings import process_env


def load(
    model: str, runtime: str, threads: int, *, eager: bool, precision: str = "fp32"
) -> LoadedModel:
    """The model as a replica with these settings would load it (eager: the plain torch module)."""
    if eager:
        from classifier_service.torch_tools import runtime as torch_runtime

        return torch_runtime.load(CATALOG[model], optimise=False)
    env = {
        **process_env(),
        "IMGQ_MODELS": model,
        "IMGQ_RUNTIME": runtime,
        "IMGQ_INFERENCE_THREADS": str(threads),
        "IMGQ_TORCHVISION_MODELS": "",
        "IMGQ_PRECISION": precision,
    }
    return load_models(ClassifierSettings.from_env(env))[model]


def preprocess_only(spec: ModelSpec) -> Callable[[Sequence[bytes]], object]:
    """What classify_batch does before the forward pass, and nothing after it."""

    def run(images: Sequence[bytes]) -> object:
        batch = np.empty((len(images), 3, spec.input_size, spec.input_size), dtype=np.float32)
        for i, data in enumerate(images):
            preprocess(data, spec, out=batch[i])
        return batch

    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.model_worker")
    parser.add_argument("--model", default="efficientnet_lite0", choices=sorted(CATALOG))
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=0, help="inference threads; 0: one a core")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--runtime", default=Runtime.AUTO.value, choices=[r.value for r in Runtime])
    parser.add_argument("--eager", action="store_true", help="the plain eager torch module")
    parser.add_argument(
        "--precision", default="fp32", choices=("fp32", "bf16"), help="as IMGQ_PRECISION"
    )
    parser.add_argument(
        "--preprocess-only", action="store_true", help="decode and preprocess, no forward pass"
    )
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument(
        "--per-image", type=int, default=0, help="instead: time each image alone this many times"
    )
    args = parser.parse_args(argv)

    threads = args.threads or os.cpu_count() or 1
    configure_threads(threads)
    images = [(p.name, p.read_bytes()) for p in image_files(args.images)]
    runtime = "none"
    run: Callable[[Sequence[bytes]], object]
    if args.preprocess_only:
        run = preprocess_only(CATALOG[args.model])
    else:
        model = load(args.model, args.runtime, threads, eager=args.eager, precision=args.precision)
        # Set again: loading a torch model is what imports torch.
        configure_threads(threads)
        warm_up(model, args.batch)
        runtime = model.runtime
        run = functools.partial(classify_batch, model)

    run([data for _, data in images[: args.batch]])
    print("READY", flush=True)
    sys.stdin.readline()

    result: dict[str, object] = {"threads": threads, "runtime": runtime}
    if args.per_image:
        times: dict[str, list[float]] = {name: [] for name, _ in images}
        for _ in range(args.per_image):
            for name, data in images:
                started = time.perf_counter()
                run([data])
                times[name].append(time.perf_counter() - started)
        result["per_image_ms"] = {n: statistics.median(t) * 1000 for n, t in times.items()}
    else:
        done = 0
        started = time.perf_counter()
        cpu = time.process_time()
        deadline = started + args.seconds
        while time.perf_counter() < deadline:
            first = done % len(images)
            run([images[(first + i) % len(images)][1] for i in range(args.batch)])
            done += args.batch
        result["images"] = done
        result["seconds"] = time.perf_counter() - started
        # CPU, not wall time: what an image costs whatever else the machine is doing.
        result["cpu_seconds"] = time.process_time() - cpu
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
