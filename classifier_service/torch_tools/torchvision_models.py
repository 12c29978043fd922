"""torchvision classifiers named in ``IMGQ_TORCHVISION_MODELS``, served when their weights are here.

Each model's weights file is the one torchvision itself would download (the basename of
``get_model_weights(name).DEFAULT.url``), looked up in ``IMGQ_WEIGHTS_DIR`` (torch's hub
cache by default).  Nothing is ever downloaded at start-up: a model whose file is missing
(and, under ONNX Runtime, not exported into the model cache either) is logged as unavailable
and not served, so no replica announces it and no gateway offers it.
``python -m classifier_service.prepare_models`` fetches the files where the network allows.

This module imports torch: the exporter and the torch runtime use it, a replica under ONNX
Runtime never does.

Preprocessing follows the weights' own transforms (resize, crop, mean, std); the labels are
the 1000 ImageNet categories every replica reports, so a model with any other head is
refused.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlsplit

import torch
import torchvision
from torchvision.models import WeightsEnum

from classifier_service.loaded import LoadedModel
from classifier_service.torch_tools.torch_forward import CATEGORIES, TorchForward
from shared.catalog import ModelSpec
from shared.errors import SettingsError

log = logging.getLogger(__name__)


def default_weights(name: str) -> WeightsEnum:
    weights: WeightsEnum = torchvision.models.get_model_weights(name).DEFAULT
    return weights


def weights_url(name: str) -> str:
    return str(default_weights(name).url)


def weights_file_name(name: str) -> str:
    """The file torchvision's downloader would write (e.g. ``resnet18-f37072fd.pth``)."""
    return os.path.basename(urlsplit(weights_url(name)).path)


def _one(value: object) -> int:
    """torchvision keeps sizes as ``[224]``; older weights use a bare int."""
    if isinstance(value, list | tuple):
        (value,) = value
    assert isinstance(value, int), value
    return value


def spec_for(name: str, weights: WeightsEnum | None = None) -> ModelSpec:
    """The model's catalogue entry, taken from what its weights were evaluated with."""
    weights = weights if weights is not None else default_weights(name)
    transforms = weights.transforms()
    mean = tuple(float(x) for x in transforms.mean)
    std = tuple(float(x) for x in transforms.std)
    assert len(mean) == len(std) == 3
    return ModelSpec(
        name=name,
        title=f"{name} (torchvision)",
        input_size=_one(transforms.crop_size),
        mean=(mean[0], mean[1], mean[2]),
        std=(std[0], std[1], std[2]),
        resize=_one(transforms.resize_size),
    )


def known_names() -> set[str]:
    """torchvision's classifiers (not its detection, segmentation or video models)."""
    return set(torchvision.models.list_models(module=torchvision.models))


def check_names(names: Iterable[str]) -> None:
    """Raise SettingsError naming every one of ``names`` that is not a torchvision classifier."""
    known = known_names()
    unknown = [name for name in names if name not in known]
    if unknown:
        raise SettingsError(
            f"IMGQ_TORCHVISION_MODELS names unknown torchvision classifiers {unknown}; "
            "known: see torchvision.models.list_models(module=torchvision.models)"
        )


def unavailable_reason(name: str, weights_dir: Path) -> str | None:
    """Why the model cannot be served from ``weights_dir``, or None when it can."""
    path = weights_dir / weights_file_name(name)
    if not path.is_file():
        return (
            f"weights file {path.name} not found in {weights_dir}; "
            "run `python -m classifier_service.prepare_models`"
        )
    if tuple(default_weights(name).meta.get("categories") or ()) != CATEGORIES:
        return (
            "refused: its weights do not classify into the 1000 ImageNet categories "
            "the service reports"
        )
    return None


def build(name: str, weights_dir: Path) -> torch.nn.Module:
    """The eager module with the weights file from ``weights_dir`` (check it is there first)."""
    module: torch.nn.Module = torchvision.models.get_model(name, weights=None)
    path = weights_dir / weights_file_name(name)
    module.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return module.eval()


def load(name: str, weights_dir: Path) -> LoadedModel | None:
    """The model with the weights file found in ``weights_dir``, or None (logged) if absent."""
    reason = unavailable_reason(name, weights_dir)
    if reason is not None:
        log.warning("model %s unavailable: %s", name, reason)
        return None
    started = time.perf_counter()
    module = build(name, weights_dir)
    log.info("loaded %s from %s in %.1f s", name, weights_dir, time.perf_counter() - started)
    runtime = f"torch {torch.__version__}, eager"
    return LoadedModel(spec_for(name), TorchForward(module), CATEGORIES, runtime)


def load_available(names: Iterable[str], weights_dir: Path) -> dict[str, LoadedModel]:
    """Every named model whose weights are present; the others are logged and left out."""
    loaded = {name: load(name, weights_dir) for name in names}
    return {name: model for name, model in loaded.items() if model is not None}
