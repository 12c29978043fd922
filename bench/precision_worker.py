"""bf16 against fp32 on the sample, in its own process: ``python -m bench.precision_worker``.

Loads the model twice as a replica would (``load_models``), once with ``IMGQ_PRECISION=fp32``
and once with ``bf16``, runs every photo through both, and compares: how often the top-1 is the
same, and the largest logit difference.  Then it times the forward pass of each on the same
preprocessed batches, in alternating slices so that other work on a shared machine weighs on
both alike.  Prints ``RESULT`` and a JSON object (``bench/precision.py`` reads it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from bench.model_worker import load
from bench.photos import image_files
from classifier_service import precision
from classifier_service.inference import configure_threads, warm_up
from classifier_service.loaded import LoadedModel
from classifier_service.preprocess import Pixels, preprocess
from shared.catalog import CATALOG

# Each precision runs this long at a time, turn about, until both have had --seconds.
_SLICE_S = 0.5


def _logits(model: LoadedModel, pixels: Pixels, batch: int) -> np.ndarray:
    return np.concatenate(
        [model.forward(pixels[i : i + batch]) for i in range(0, len(pixels), batch)]
    )


def _rates(
    models: dict[str, LoadedModel], pixels: Pixels, batch: int, seconds: float
) -> dict[str, float]:
    """Images per second of each model's forward pass, measured in alternating slices."""
    batches = [pixels[i : i + batch] for i in range(0, len(pixels) - batch + 1, batch)]
    images = dict.fromkeys(models, 0)
    spent = dict.fromkeys(models, 0.0)
    turn = 0
    while min(spent.values()) < seconds:
        for key, model in models.items():
            started = time.perf_counter()
            while time.perf_counter() - started < _SLICE_S:
                model.forward(batches[turn % len(batches)])
                images[key] += batch
                turn += 1
            spent[key] += time.perf_counter() - started
    return {key: images[key] / spent[key] for key in models}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.precision_worker")
    parser.add_argument("--model", default="efficientnet_lite0", choices=sorted(CATALOG))
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0, help="timed, per precision")
    args = parser.parse_args(argv)

    configure_threads(args.threads)
    spec = CATALOG[args.model]
    photos = image_files(args.images)
    pixels = np.stack([preprocess(p.read_bytes(), spec) for p in photos])
    models = {
        wanted: load(args.model, "onnxruntime", args.threads, eager=False, precision=wanted)
        for wanted in ("fp32", "bf16")
    }
    for model in models.values():
        warm_up(model, args.batch)
    exact, reduced = (_logits(models[p], pixels, args.batch) for p in ("fp32", "bf16"))
    result = {
        "model": args.model,
        "photos": len(photos),
        "same_top1": int((exact.argmax(axis=1) == reduced.argmax(axis=1)).sum()),
        "max_logit_difference": float(np.abs(exact - reduced).max()),
        "cpu_bf16": precision.native_bf16(),
        "precision": str(models["bf16"].precision),
        "runtime": {key: model.runtime for key, model in models.items()},
        "threads": args.threads,
        "batch": args.batch,
        "images_per_s": _rates(models, pixels, args.batch, args.seconds),
    }
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
