"""Run a batch of images through one model.  Synchronous: called on the inference thread.

numpy only: whichever runtime holds the model (``LoadedModel.forward``), this module and
everything it imports stay free of torch.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence

import numpy as np

from classifier_service.loaded import LoadedModel, Logits
from classifier_service.preprocess import preprocess
from shared.errors import ImageDecodeError
from shared.messages import Label

TOP_K = 5

log = logging.getLogger(__name__)


def configure_threads(threads: int) -> None:
    """Pin torch's pools on the thread that runs inference (OpenMP settings are per thread).

    Only the torch runtime needs it: an ONNX Runtime session and an OpenVINO compiled model get
    their thread count when they are created (``onnx_runtime.py``, ``openvino_runtime.py``),
    and importing torch here just to configure it would load torch into a replica that never
    uses it.
    """
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)


def softmax(logits: Logits) -> Logits:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    result: Logits = shifted / shifted.sum(axis=1, keepdims=True)
    return result


def classify_batch(
    model: LoadedModel, images: Sequence[bytes], delay: float = 0.0
) -> list[tuple[Label, ...] | ImageDecodeError]:
    """Top-5 labels for each image; an image that fails to decode fails alone, whatever the
    failure: one odd image among a producer's messages must not fail its neighbours."""
    results: list[tuple[Label, ...] | ImageDecodeError] = []
    size = model.spec.input_size
    # Each image is written straight into its row of the batch: no per-image copies.
    batch = np.empty((len(images), 3, size, size), dtype=np.float32)
    slots: list[int] = []
    for data in images:
        try:
            preprocess(data, model.spec, out=batch[len(slots)])
        except ImageDecodeError as exc:
            results.append(exc)
            continue
        except Exception as exc:
            # decode() turns what Pillow is known to raise into ImageDecodeError; anything else
            # (a plugin's IndexError on a malformed file, say) is logged, since it may be ours
            # to fix, and still fails only this image.
            log.exception("preprocessing an image failed unexpectedly")
            results.append(ImageDecodeError(f"cannot decode image: {type(exc).__name__}: {exc}"))
            continue
        slots.append(len(results))
        results.append(())
    if slots:
        probabilities = softmax(model.forward(batch[: len(slots)]))
        # Highest first; a stable sort breaks (vanishingly rare) ties by class index.
        indices = np.argsort(-probabilities, axis=1, kind="stable")[:, :TOP_K]
        scores = np.take_along_axis(probabilities, indices, axis=1)
        for slot, row_scores, row_indices in zip(
            slots, scores.tolist(), indices.tolist(), strict=True
        ):
            results[slot] = tuple(
                Label(model.labels[i], i, round(s, 6))
                for s, i in zip(row_scores, row_indices, strict=True)
            )
    if delay:
        # Per job, as a slower model would take: whatever the batch, each job costs ``delay``.
        time.sleep(delay * len(images))
    return results


# A frozen TorchScript graph specialises on its first calls at each input shape (its profiling
# executor), and ONNX Runtime plans its memory on the first run at a shape: two passes per
# shape leave either ready before real jobs arrive.
_WARM_UP_PASSES = 2


def warm_up(model: LoadedModel, batch_size: int = 1) -> None:
    """Run every batch shape up to ``batch_size`` at start-up, so no job pays for the first
    pass at a shape (lazy initialisation, graph specialisation): about 50-150 ms each."""
    size = model.spec.input_size
    for n in range(1, batch_size + 1):
        for _ in range(_WARM_UP_PASSES):
            model.forward(np.zeros((n, 3, size, size), dtype=np.float32))
