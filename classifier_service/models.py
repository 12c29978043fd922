"""The models a replica serves, loaded once, whichever runtime runs them: the top of the
classifier's model code (only ``__main__`` and the tools above it import this module).

Importing this module never imports torch.  ``load_models`` picks the runtime
(``IMGQ_RUNTIME``) and imports only that one's module.  Under ONNX Runtime every model comes
from the model repository (``repository.py``); under torch the built-ins come from their weights
(``torch_tools/runtime.py``).  A TorchScript network runs its own code when loaded, so a folder
holding one is served only with ``IMGQ_ALLOW_TORCHSCRIPT=true``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from classifier_service import builtin_models, repository
from classifier_service.installed import installed
from classifier_service.loaded import LoadedModel
from classifier_service.repository import ModelFolder, NetworkFormat, Selection
from classifier_service.settings import ALLOW_TORCHSCRIPT, ClassifierSettings, Device, Runtime
from shared.errors import SettingsError

log = logging.getLogger(__name__)


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
    built-ins' folders written first where missing (``builtin_models.py``).  Under torch the
    built-ins come from their weights, and repository models with a TorchScript or state-dict
    network load directly.  A catalogue model that cannot be had stops the replica with an
    error; a broken repository folder is logged and skipped; a replica left with nothing to
    serve stops with an error.
    """
    runtime = choose_runtime(settings)
    loaded: list[LoadedModel]
    if runtime is Runtime.TORCH:
        if settings.device is Device.CUDA:
            raise SettingsError("IMGQ_DEVICE=cuda needs IMGQ_RUNTIME=onnxruntime (or auto)")
        # torch is optional: imported only for the replica that runs it.
        from classifier_service.torch_tools import runtime as torch_runtime

        chosen = _select(settings, builtins_from_repository=False)
        loaded = list(torch_runtime.load_models(builtin_models.narrowed(settings)).values())
        defaults = {model.spec.name: model.version for model in loaded}
        loaded += torch_runtime.load_folders(
            allowed(chosen.folders, settings), settings.inference_threads
        )
    else:
        # onnxruntime is optional too (a torch-only install).
        from classifier_service import onnx_models

        builtin_models.ensure(settings)
        chosen = _select(settings, builtins_from_repository=True)
        defaults = {}
        loaded = onnx_models.load_folders(allowed(chosen.folders, settings), settings)
    # After loading: a version that failed to load is no default (the next highest is).
    defaults |= chosen.defaults({model.id for model in loaded})
    models = keyed(loaded, defaults)
    if not models:
        raise SettingsError(
            f"no model to serve: none configured, or none of them could be loaded (the log "
            f"above says why); model repository: {settings.model_dir}"
        )
    return models


def allowed(folders: tuple[ModelFolder, ...], settings: ClassifierSettings) -> list[ModelFolder]:
    """The folders this replica may load: a TorchScript network is code (``torch.jit.load``
    runs it), served only where the operator allows it; without, its folder is skipped."""
    if settings.allow_torchscript:
        return list(folders)
    kept = []
    for folder in folders:
        if folder.format is NetworkFormat.TORCHSCRIPT:
            log.warning(
                "model folder %s skipped: its network is TorchScript, which runs its own code "
                "when loaded; %s=true serves it",
                folder.path,
                ALLOW_TORCHSCRIPT.name,
            )
            continue
        kept.append(folder)
    return kept


def _select(settings: ClassifierSettings, *, builtins_from_repository: bool) -> Selection:
    found = repository.scan(settings.model_dir)
    builtin_names = (*settings.models, *settings.torchvision_models)
    chosen = repository.select(found, builtin_names, settings.serve)
    if builtins_from_repository:
        return chosen
    # Under torch the built-ins come from their weights, not from their exported folders.
    folders = tuple(f for f in chosen.folders if f.name not in builtin_names)
    return Selection(folders, chosen.found)


def keyed(loaded: list[LoadedModel], defaults: Mapping[str, str]) -> dict[str, LoadedModel]:
    """The worker's models dict: ``name`` (default version only), then ``name@version``."""
    models: dict[str, LoadedModel] = {}
    for model in loaded:
        if defaults.get(model.spec.name) == model.version:
            models[model.spec.name] = model
        models[model.id] = model
    return models
