"""One bare-model measurement, in its own process: ``python -m bench.model_worker``.

The classifier's own code path (``classify_batch``: decode, preprocess, forward, top-5) with
nothing around it: no broker, no HTTP.  It loads and warms up, prints ``READY``, waits for a
line on stdin so that several workers start measuring together, then runs for ``--seconds``
and prints ``RESULT`` and a JSON object.  Only this process imports torch: the benchmark's
parent never does, so it never forks with torch loaded (forked children hung here).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from bench.photos import image_files
from classifier_service.inference import classify_batch, configure_threads, warm_up
from classifier_service.models import load
from shared.catalog import CATALOG


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.model_worker")
    parser.add_argument("--model", default="efficientnet_lite0", choices=sorted(CATALOG))
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0: torch's default")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--eager", action="store_true", help="the plain eager module")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument(
        "--per-image", type=int, default=0, help="instead: time each image alone this many times"
    )
    args = parser.parse_args(argv)

    if args.threads:
        configure_threads(args.threads)
    images = [(p.name, p.read_bytes()) for p in image_files(args.images)]
    model = load(CATALOG[args.model], optimise=not args.eager)
    warm_up(model, args.batch)
    classify_batch(model, [data for _, data in images[: args.batch]])
    print("READY", flush=True)
    sys.stdin.readline()

    result: dict[str, object] = {"threads": torch.get_num_threads()}
    if args.per_image:
        times: dict[str, list[float]] = {name: [] for name, _ in images}
        for _ in range(args.per_image):
            for name, data in images:
                started = time.perf_counter()
                classify_batch(model, [data])
                times[name].append(time.perf_counter() - started)
        result["per_image_ms"] = {n: statistics.median(t) * 1000 for n, t in times.items()}
    else:
        done = 0
        started = time.perf_counter()
        deadline = started + args.seconds
        while time.perf_counter() < deadline:
            first = done % len(images)
            batch = [images[(first + i) % len(images)][1] for i in range(args.batch)]
            classify_batch(model, batch)
            done += len(batch)
        result["images"] = done
        result["seconds"] = time.perf_counter() - started
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
