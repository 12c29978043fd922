"""Run a batch of images through one model.  Synchronous: called on the inference thread."""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from classifier_service.models import CATEGORIES, LoadedModel
from classifier_service.preprocess import preprocess
from shared.errors import ImageDecodeError
from shared.messages import Label

TOP_K = 5


def configure_threads(threads: int) -> None:
    """Pin torch's pools on the thread that runs inference (OpenMP settings are per thread)."""
    torch.set_num_threads(threads)


def classify_batch(
    model: LoadedModel, images: Sequence[bytes], delay: float = 0.0
) -> list[tuple[Label, ...] | ImageDecodeError]:
    """Top-5 labels for each image; an image that fails to decode fails alone."""
    results: list[tuple[Label, ...] | ImageDecodeError] = []
    tensors: list[torch.Tensor] = []
    slots: list[int] = []
    for data in images:
        try:
            tensors.append(preprocess(data, model.spec))
            slots.append(len(results))
            results.append(())
        except ImageDecodeError as exc:
            results.append(exc)
    if tensors:
        with torch.inference_mode():
            probabilities = model.module(torch.stack(tensors)).softmax(dim=1)
            scores, indices = probabilities.topk(TOP_K, dim=1)
        for slot, row_scores, row_indices in zip(
            slots, scores.tolist(), indices.tolist(), strict=True
        ):
            results[slot] = tuple(
                Label(CATEGORIES[i], i, round(s, 6))
                for s, i in zip(row_scores, row_indices, strict=True)
            )
    if delay:
        time.sleep(delay)
    return results


# A frozen graph specialises on its first calls at each input shape (TorchScript's profiling
# executor): two passes per shape leave it optimised before real jobs arrive.
_WARM_UP_PASSES = 2


def warm_up(model: LoadedModel, batch_size: int = 1) -> None:
    """Run every batch shape up to ``batch_size`` at start-up, so no job pays for the first
    pass at a shape (lazy initialisation, graph specialisation): about 50-150 ms each."""
    size = model.spec.input_size
    with torch.inference_mode():
        for n in range(1, batch_size + 1):
            for _ in range(_WARM_UP_PASSES):
                model.module(torch.zeros(n, 3, size, size))
