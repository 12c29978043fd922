"""A torch module behind the runtime-neutral ``LoadedModel.forward``, and the ImageNet labels."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import ResNet50_Weights

from classifier_service.loaded import Logits
from classifier_service.preprocess import Pixels

# torchvision's ImageNet category list (the order of the 1000 class indices).  Reading the
# enum's metadata downloads nothing.  The exporter writes it to each model's labels.txt.
CATEGORIES: tuple[str, ...] = tuple(ResNet50_Weights.IMAGENET1K_V2.meta["categories"])


class TorchForward:
    """A module behind the runtime-neutral ``LoadedModel.forward``: numpy in, numpy out."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __call__(self, batch: Pixels) -> Logits:
        with torch.inference_mode():
            logits: torch.Tensor = self.module(torch.from_numpy(batch))
        result: Logits = logits.numpy()
        return result
