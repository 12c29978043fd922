"""The built-in models' repository folders: the catalogue's and the configured torchvision ones.

They are served like any other repository folder (``repository.py``); this module only puts
them there.  Each is exported to ONNX into the model cache first (``model_folders.py``: a
subprocess, so the serving process never imports torch), then its ONNX file and labels are
linked (or copied) into ``<IMGQ_MODEL_DIR>/<name>/1/`` with a ``model.json`` saying how to
prepare its pixels.  ``python -m classifier_service.prepare_models`` does it ahead of time; a
replica does it at start-up for a configured built-in its repository lacks.

A folder is written under a temporary name and renamed into place, ``model.json`` last, under
the same per-name lock as the model cache: two replicas starting together write it once.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from classifier_service import model_cache, model_folders, repository
from classifier_service.model_cache import ExportedModel
from classifier_service.repository import BUILTIN_VERSION, BrokenModelFolder, NetworkFormat
from classifier_service.settings import ClassifierSettings
from shared.catalog import CATALOG, ModelSpec, split_model_id

log = logging.getLogger(__name__)

_TEMP_PREFIX = ".tmp-"


def configured(settings: ClassifierSettings) -> tuple[str, ...]:
    """The built-ins this replica is configured to serve (IMGQ_MODELS, IMGQ_TORCHVISION_MODELS,
    narrowed by IMGQ_SERVE when set)."""
    names = (*settings.models, *settings.torchvision_models)
    if not settings.serve:
        return names
    wanted = {parsed[0] for entry in settings.serve if (parsed := split_model_id(entry))}
    return tuple(name for name in names if name in wanted)


def folder(directory: Path, name: str) -> Path:
    return directory / name / BUILTIN_VERSION


def present(directory: Path, name: str) -> bool:
    try:
        return repository.read_folder(folder(directory, name)).builtin
    except BrokenModelFolder:
        return False


def ensure(settings: ClassifierSettings) -> None:
    """Write the folder of every configured built-in that the repository lacks (or holds
    broken), exporting what the model cache lacks first.

    Raises as ``model_folders.resolve`` does for a catalogue model that cannot be had here;
    a torchvision model without weights is logged and left out.
    """
    names = configured(settings)
    missing = [name for name in names if not present(settings.model_dir, name)]
    if not missing:
        return
    log.info("writing built-in models %s into %s", ", ".join(missing), settings.model_dir)
    for name, exported in model_folders.resolve(narrowed(settings, missing)).items():
        install(settings.model_dir, exported, CATALOG.get(name, exported.spec))


def narrowed(
    settings: ClassifierSettings, names: Sequence[str] | None = None
) -> ClassifierSettings:
    """The settings with only ``names`` (default: ``configured``) among the built-ins."""
    names = configured(settings) if names is None else names
    return replace(
        settings,
        models=tuple(n for n in settings.models if n in names),
        torchvision_models=tuple(n for n in settings.torchvision_models if n in names),
    )


def install(directory: Path, exported: ExportedModel, spec: ModelSpec) -> Path:
    """Put the exported model's folder into the repository (replacing a broken one)."""
    name = spec.name
    target = folder(directory, name)
    with model_cache.locked(directory, name):
        if present(directory, name):
            return target  # another replica wrote it while we waited for the lock
        for leftover in (directory / name).glob(_TEMP_PREFIX + "*"):
            shutil.rmtree(leftover, ignore_errors=True)
        temporary = Path(tempfile.mkdtemp(prefix=_TEMP_PREFIX, dir=directory / name))
        try:
            _link_or_copy(exported.model_file, temporary / model_cache.MODEL_FILE)
            _link_or_copy(
                exported.path / model_cache.LABELS_FILE, temporary / repository.LABELS_FILE
            )
            data = repository.metadata(
                spec, NetworkFormat.ONNX, model_cache.MODEL_FILE, builtin=True
            )
            # The weights it was exported from, for whoever wonders which ones.
            data["source"] = {"weights_sha256": exported.weights_sha256}
            (temporary / repository.METADATA_FILE).write_text(
                json.dumps(data, indent=2) + "\n", encoding="utf-8"
            )
            if target.exists():
                stale = Path(tempfile.mkdtemp(prefix=_TEMP_PREFIX, dir=directory / name))
                target.rename(stale / "old")
            temporary.rename(target)
            target.chmod(0o755)
        except BaseException:
            shutil.rmtree(temporary, ignore_errors=True)
            raise
    log.info("built-in model %s written to %s", name, target)
    return target


def _link_or_copy(source: Path, target: Path) -> None:
    """A hard link where both are on one file system (no second copy of a large network);
    the cache folder is never rewritten in place (a new export is a new folder), so sharing
    the file is safe."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
