"""The exported folder of each configured model, exporting in a subprocess what the cache lacks.

Runs in the serving process, which must never import torch (memory, and forked children of a
process holding torch hang): the cache is read with hashlib and json only, and a model that
is not there yet is exported by ``python -m classifier_service.export`` in a process of its
own, which takes the cache's lock (``model_cache.py``).  A model whose weights are not
installed here (a slim image) is served from any folder the cache holds for it.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from classifier_service import model_cache
from classifier_service.installed import installed, weights_path
from classifier_service.model_cache import ExportedModel
from classifier_service.repository import ModelFolder
from classifier_service.settings import ClassifierSettings
from shared.catalog import CATALOG
from shared.errors import ModelExportFailed, SettingsError

log = logging.getLogger(__name__)

# Starts the exporter's one line of JSON on its stdout (torch_tools/export.py writes it).
REPORT_PREFIX = "IMGQ-EXPORT "
# The only variables the exporter inherits.  It loads networks from the model repository (a
# TorchScript file runs its own code), so it gets no broker URL or password, no API token and
# no other secret of the replica's: only what Python, torch and the exporter's settings read.
EXPORTER_VARIABLES = frozenset(
    {
        "HOME",
        "LANG",
        "LC_ALL",
        "LD_LIBRARY_PATH",
        "PATH",
        "PYTHONPATH",
        "TMPDIR",
        "TORCH_HOME",
        "TZ",
        "VIRTUAL_ENV",
        "XDG_CACHE_HOME",
        "IMGQ_ALLOW_TORCHSCRIPT",
        "IMGQ_MODELS",
        "IMGQ_MODEL_CACHE",
        "IMGQ_MODEL_DIR",
        "IMGQ_TORCHVISION_MODELS",
        "IMGQ_WEIGHTS_DIR",
    }
)


def resolve(settings: ClassifierSettings) -> dict[str, ExportedModel]:
    """Folders for every catalogue model and every torchvision model that can be served.

    Raises SettingsError for a catalogue model that is neither in the cache nor exportable
    here, or for a name torchvision does not know; ModelExportFailed when the exporter fails.
    """
    cache = settings.model_cache
    found: dict[str, ExportedModel] = {}
    for name in settings.models:
        if (exported := catalogue_folder(cache, name)) is not None:
            found[name] = exported
    for name in settings.torchvision_models:
        if (exported := torchvision_folder(cache, name, settings.weights_dir)) is not None:
            found[name] = exported
    catalogue = [name for name in settings.models if name not in found]
    torchvision = [name for name in settings.torchvision_models if name not in found]
    if catalogue or torchvision:
        found |= _export(settings, catalogue, torchvision)
    wanted = (*settings.models, *settings.torchvision_models)
    return {name: found[name] for name in wanted if name in found}


def catalogue_folder(cache: Path, name: str) -> ExportedModel | None:
    spec = CATALOG[name]
    weights = weights_path(spec)
    if weights is None:
        # No weights package (the slim image): whatever was exported for this model.
        return next((e for e in model_cache.exported_versions(cache, name) if e.serves(spec)), None)
    exported = model_cache.find(cache, name, model_cache.sha256_file(weights))
    return exported if exported is not None and exported.serves(spec) else None


def torchvision_folder(cache: Path, name: str, weights_dir: Path) -> ExportedModel | None:
    """The folder for the weights file in ``weights_dir``, found by the file name an earlier
    export recorded (torchvision itself, which knows the name, is not imported here)."""
    versions = model_cache.exported_versions(cache, name)
    for exported in versions:
        weights = weights_dir / exported.weights_file
        if weights.is_file():
            # None when the file has changed since: export these weights too.
            return model_cache.find(cache, name, model_cache.sha256_file(weights))
    # Weights not here (an image without them) but exported before: serve that.
    return versions[0] if versions else None


def _export(
    settings: ClassifierSettings, catalogue: list[str], torchvision: list[str]
) -> dict[str, ExportedModel]:
    if not installed("torch"):
        reason = (
            f"not in the model cache {settings.model_cache}, and torch (which exports it) "
            "is not installed here"
        )
        if catalogue:
            raise SettingsError(f"IMGQ_MODELS: {', '.join(catalogue)} {reason}")
        for name in torchvision:
            log.warning("model %s unavailable: %s", name, reason)
        return {}
    args = [*catalogue, *(f"--torchvision={name}" for name in torchvision)]
    names = ", ".join(catalogue + torchvision)
    report = _run_exporter(settings, args, names)
    if report is None:
        raise ModelExportFailed(f"exporting {names} failed; its log is above")
    if report["unknown"]:
        raise SettingsError(
            f"IMGQ_TORCHVISION_MODELS names unknown torchvision classifiers {report['unknown']}; "
            "known: see torchvision.models.list_models(module=torchvision.models)"
        )
    exported: dict[str, ExportedModel] = {}
    for name, path in report["exported"].items():
        folder = ExportedModel.read(Path(path))
        if folder is None:
            raise ModelExportFailed(f"the exporter reported {path}, which is not a model folder")
        exported[name] = folder
    if failed := [name for name in catalogue if name not in exported]:
        reasons = report["unavailable"]
        raise ModelExportFailed(
            "; ".join(f"{name}: {reasons.get(name, 'not exported')}" for name in failed)
        )
    for name in torchvision:
        if name not in exported:
            # The exporter logged why too; this line is the replica's own, as under torch.
            log.warning("model %s unavailable: %s", name, report["unavailable"].get(name))
    return exported


def repository_networks(
    settings: ClassifierSettings, folders: Sequence[ModelFolder]
) -> dict[str, Path | str]:
    """The ONNX file of each TorchScript or state-dict network, by model id, exported into the
    model cache (keyed by the network file's sha256) where missing; or why there is none.
    Never raises for a folder: a network the exporter cannot handle costs only its model."""
    cache = settings.model_cache
    found: dict[str, Path | str] = {}
    missing: list[ModelFolder] = []
    for folder in folders:
        exported = model_cache.find(cache, folder.id, model_cache.sha256_file(folder.network_file))
        if exported is not None and exported.serves(folder.spec):
            found[folder.id] = exported.model_file
        else:
            missing.append(folder)
    if not missing:
        return found
    if not installed("torch"):
        reason = "not in the model cache, and torch (which exports it to ONNX) is not installed"
        return found | {folder.id: reason for folder in missing}
    args = [f"--network={folder.path}" for folder in missing]
    report = _run_exporter(settings, args, ", ".join(folder.id for folder in missing))
    for folder in missing:
        if report is None:
            found[folder.id] = "the exporter failed; its log is above"
        elif (path := report["exported"].get(folder.id)) is not None:
            found[folder.id] = Path(path) / model_cache.MODEL_FILE
        else:
            found[folder.id] = report["unavailable"].get(folder.id, "not exported")
    return found


def _run_exporter(settings: ClassifierSettings, args: list[str], names: str) -> Any | None:
    """Run ``python -m classifier_service.export ARGS`` (torch in its own process): its JSON
    report, or None when it ended without one (a crash)."""
    command = [sys.executable, "-m", "classifier_service.export", *args]
    command += ["--cache", str(settings.model_cache), "--weights-dir", str(settings.weights_dir)]
    env = exporter_env(os.environ, settings.inference_threads)
    log.info("exporting %s to ONNX into %s", names, settings.model_cache)
    started = time.perf_counter()
    # Its log goes to our stderr as it comes; stdout carries the report (and anything a
    # library prints, logged here).
    result = subprocess.run(command, env=env, stdout=subprocess.PIPE, text=True, check=False)
    report = None
    for line in result.stdout.splitlines():
        if line.startswith(REPORT_PREFIX):
            report = json.loads(line.removeprefix(REPORT_PREFIX))
        elif line.strip():
            log.info("export: %s", line)
    if report is None:
        log.error("exporting %s failed (exit status %d)", names, result.returncode)
    else:
        log.info("export finished in %.1f s", time.perf_counter() - started)
    return report


def exporter_env(environ: Mapping[str, str], threads: int) -> dict[str, str]:
    """The exporter's environment: the allowed variables of ours, and one replica's threads."""
    env = {name: value for name, value in environ.items() if name in EXPORTER_VARIABLES}
    count = str(threads)
    return env | {
        "IMGQ_INFERENCE_THREADS": count,
        "OMP_NUM_THREADS": count,
        "MKL_NUM_THREADS": count,
    }
