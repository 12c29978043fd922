"""A model loaded for serving, whichever runtime runs it, and the loop that loads each folder.

The bottom of the classifier's model code: numpy and the repository's folder type only, so the
inference code, every runtime and the loader all import it, and it imports none of them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from classifier_service.precision import Precision
from classifier_service.preprocess import Pixels
from classifier_service.repository import (
    BUILTIN_VERSION,
    LABELS_FILE,
    BrokenModelFolder,
    ModelFolder,
)
from shared.catalog import ModelSpec, model_id

log = logging.getLogger(__name__)

# (N, classes) float32 scores before softmax.
Logits = npt.NDArray[np.float32]
# A float32 NCHW batch at ``spec.input_size`` (C-contiguous) -> its logits.
Forward = Callable[[Pixels], Logits]


@dataclass(frozen=True, slots=True)
class LoadedModel:
    spec: ModelSpec
    forward: Forward
    # The class names, in class-index order.
    labels: tuple[str, ...]
    # What runs it, for the logs (e.g. "onnxruntime 1.32.0, CPUExecutionProvider, 1 thread").
    runtime: str = ""
    # Its version in the model repository (spec.name is its name).
    version: str = BUILTIN_VERSION
    # The arithmetic it actually runs in (announced in heartbeats, shown on /info).
    precision: Precision = Precision.FP32

    @property
    def id(self) -> str:
        """``name@version``: how a request names exactly this model."""
        return model_id(self.spec.name, self.version)


def check_outputs(model: LoadedModel) -> None:
    """One forward pass: the network must score exactly one class per label.  Raises
    BrokenModelFolder, so a mislabelled model is skipped at start-up instead of failing jobs."""
    size = model.spec.input_size
    try:
        logits = model.forward(np.zeros((1, 3, size, size), dtype=np.float32))
    except Exception as exc:
        raise BrokenModelFolder(
            f"the network fails on a 1x3x{size}x{size} input: {type(exc).__name__}: {exc}"
        ) from None
    if logits.shape != (1, len(model.labels)):
        raise BrokenModelFolder(
            f"the network outputs {logits.shape[1:] or 'a scalar'} per image but "
            f"{LABELS_FILE} has {len(model.labels)} labels"
        )


def load_each(
    folders: Iterable[ModelFolder], load: Callable[[ModelFolder], LoadedModel]
) -> list[LoadedModel]:
    """Each folder's model as ``load`` (one runtime's loader) makes it, its outputs checked.

    A folder that cannot be served (``load`` or the check raises BrokenModelFolder) is logged
    with the reason and left out: one broken folder never costs the replica the others.
    """
    loaded = []
    for folder in folders:
        started = time.perf_counter()
        try:
            model = load(folder)
            check_outputs(model)
        except BrokenModelFolder as exc:
            log.warning("model folder %s skipped: %s", folder.path, exc)
            continue
        log.info(
            "loaded %s (%s, %s, %d classes) from %s in %.2f s",
            folder.id,
            model.runtime,
            model.precision,
            len(folder.labels),
            folder.path,
            time.perf_counter() - started,
        )
        loaded.append(model)
    return loaded
