"""The repository's models as ONNX networks: ONNX Runtime in fp32, or OpenVINO in bf16 where a
model asks for it and this CPU has bfloat16 instructions (``precision.py``).

TorchScript and state-dict networks run as their ONNX export, from the model cache
(``model_folders.repository_networks`` exports what it lacks, in a subprocess).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from classifier_service import model_folders, onnx_runtime, precision
from classifier_service.installed import installed
from classifier_service.loaded import Forward, LoadedModel, load_each
from classifier_service.precision import Precision
from classifier_service.repository import BrokenModelFolder, ModelFolder, NetworkFormat
from classifier_service.settings import ClassifierSettings
from shared.errors import SettingsError

log = logging.getLogger(__name__)


def load_folders(folders: Sequence[ModelFolder], settings: ClassifierSettings) -> list[LoadedModel]:
    """Each folder's model in a session of its own; a folder that cannot be served is logged
    and left out."""
    others = [f for f in folders if f.format is not NetworkFormat.ONNX]
    exported = model_folders.repository_networks(settings, others) if others else {}
    on_cpu = onnx_runtime.providers(settings.device)[0] == onnx_runtime.CPU
    cpu_bf16 = precision.native_bf16()

    def load(folder: ModelFolder) -> LoadedModel:
        onnx_file = _onnx_file(folder, exported)
        requested = folder.precision or settings.precision
        chosen, why = precision.choose(
            requested, on_cpu=on_cpu, cpu_bf16=cpu_bf16, openvino=installed("openvino")
        )
        if why:
            log.warning("model %s runs in %s, not %s: %s", folder.id, chosen, requested, why)
        forward, runtime = _load_file(onnx_file, chosen, settings)
        return LoadedModel(folder.spec, forward, folder.labels, runtime, folder.version, chosen)

    loaded = load_each(folders, load)
    onnx_runtime.return_freed_memory()
    return loaded


def _onnx_file(folder: ModelFolder, exported: dict[str, Path | str]) -> Path:
    if folder.format is NetworkFormat.ONNX:
        return folder.network_file
    found = exported.get(folder.id, "not exported")
    if isinstance(found, str):
        raise BrokenModelFolder(f"its {folder.format.value} network: {found}")
    return found


def _load_file(
    onnx_file: Path, chosen: Precision, settings: ClassifierSettings
) -> tuple[Forward, str]:
    try:
        if chosen is Precision.BF16:
            from classifier_service import openvino_runtime

            return openvino_runtime.load_file(onnx_file, settings.inference_threads)
        session, runtime = onnx_runtime.load_file(
            onnx_file, settings.inference_threads, settings.device
        )
        return onnx_runtime.OnnxForward(session), runtime
    except SettingsError:
        raise
    except Exception as exc:  # each runtime raises its own kinds for a bad file
        name = "OpenVINO" if chosen is Precision.BF16 else "ONNX Runtime"
        raise BrokenModelFolder(f"{name} cannot load {onnx_file.name}: {exc}") from None
