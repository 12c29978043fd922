"""The catalogue models exported to ONNX once per test session, for every module that needs them.

The export runs exactly as a replica runs it (``model_folders.resolve``: a subprocess of
``python -m classifier_service.export``) into a cache under the session's temporary folder,
never into the user's own cache.  The first caller exports (about 10 s a model); later
callers find the folders there and export nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pytest

from classifier_service import model_folders
from classifier_service.loaded import LoadedModel
from classifier_service.model_cache import ExportedModel
from classifier_service.models import load_models
from classifier_service.settings import ClassifierSettings
from shared.catalog import CATALOG


def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.getbasetemp() / "model-cache"


def settings(cache: Path, models: Iterable[str] = tuple(CATALOG), **env: str) -> ClassifierSettings:
    """A replica's settings with this cache, and a model repository beside it (never the
    user's own)."""
    return ClassifierSettings.from_env(
        {
            "IMGQ_MODELS": ",".join(models),
            "IMGQ_MODEL_CACHE": str(cache),
            "IMGQ_MODEL_DIR": str(cache.parent / f"{cache.name}-repository"),
            **env,
        }
    )


def export(
    tmp_path_factory: pytest.TempPathFactory, models: Iterable[str] = tuple(CATALOG)
) -> dict[str, ExportedModel]:
    return model_folders.resolve(settings(cache_dir(tmp_path_factory), models))


def load_onnx(
    tmp_path_factory: pytest.TempPathFactory, models: Iterable[str] = tuple(CATALOG)
) -> dict[str, LoadedModel]:
    """The models as a replica under ONNX Runtime (one thread) loads them."""
    models = tuple(models)
    export(tmp_path_factory, models)
    return load_models(settings(cache_dir(tmp_path_factory), models, IMGQ_RUNTIME="onnxruntime"))
