"""ONNX Runtime gives the eager torch model's answers, and a replica under it stays small.

The equality check runs every catalogue model on every photo of the ImageNet sample: the same
preprocessed array goes through the eager torch module (the source of truth) and through the
exported model under ONNX Runtime, exactly as a replica loads it.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch

from classifier_service import model_folders, models, onnx_runtime
from classifier_service.loaded import LoadedModel
from classifier_service.models import choose_runtime
from classifier_service.preprocess import Pixels, preprocess
from classifier_service.settings import ClassifierSettings, Device, Runtime
from classifier_service.torch_tools import runtime as torch_runtime
from shared.catalog import CATALOG
from shared.errors import SettingsError
from tests import exported
from tests.api import REPO

# What "the same answers" means: the exported graph folds batch norms and reorders sums, so
# the logits differ in the last few bits (measured: about 2e-5), never in the ranking.
MAX_LOGIT_DIFFERENCE = 1e-3
# Photos per forward pass: large enough to keep the test quick, small enough for Lite2's
# activations at 260 px to stay well under a gigabyte in eager torch.
CHUNK = 20
# The requirement for a replica holding the three catalogue models (measured: about 260 MB).
MAX_REPLICA_RSS_MB = 400


@pytest.fixture(scope="module")
def onnx_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, LoadedModel]:
    return exported.load_onnx(tmp_path_factory)


def _sample(folder: Path) -> dict[str, int]:
    with open(folder / "labels.csv", newline="", encoding="utf-8") as f:
        return {row["file"]: int(row["class_index"]) for row in csv.DictReader(f)}


def _in_chunks(batch: Pixels, forward: Callable[[Pixels], np.ndarray]) -> np.ndarray:
    return np.concatenate([forward(batch[i : i + CHUNK]) for i in range(0, len(batch), CHUNK)])


@pytest.mark.parametrize("name", sorted(CATALOG))
def test_onnx_runtime_gives_the_eager_models_logits(
    name: str,
    onnx_models: dict[str, LoadedModel],
    imagenet_sample: Path,
    figure: Callable[[str], None],
) -> None:
    spec = CATALOG[name]
    labels = _sample(imagenet_sample)
    batch = np.stack([preprocess((imagenet_sample / f).read_bytes(), spec) for f in labels])
    eager = torch_runtime.build(spec)

    def reference(chunk: Pixels) -> np.ndarray:
        with torch.inference_mode():
            result: np.ndarray = eager(torch.from_numpy(chunk)).numpy()
        return result

    expected = _in_chunks(batch, reference)
    got = _in_chunks(batch, onnx_models[name].forward)

    assert got.shape == expected.shape == (len(labels), 1000)
    difference = float(np.abs(got - expected).max())
    same_top1 = int((got.argmax(axis=1) == expected.argmax(axis=1)).sum())
    correct = int((got.argmax(axis=1) == np.array(list(labels.values()))).sum())
    figure(
        f"{name}: ONNX Runtime vs eager torch on {len(labels)} photos: max logit difference "
        f"{difference:.1e}, same top-1 on {same_top1}/{len(labels)}; top-1 {correct}/{len(labels)}"
    )
    assert difference <= MAX_LOGIT_DIFFERENCE
    assert same_top1 == len(labels)


def test_any_batch_size_gives_the_same_logits(onnx_models: dict[str, LoadedModel]) -> None:
    spec = CATALOG["efficientnet_lite0"]
    batch = np.stack([preprocess(p.read_bytes(), spec) for p in sorted(REPO.glob("images/*.jpg"))])
    forward = onnx_models[spec.name].forward
    together = forward(batch)
    one_by_one = np.concatenate([forward(batch[i : i + 1]) for i in range(len(batch))])
    assert np.abs(together - one_by_one).max() <= MAX_LOGIT_DIFFERENCE


def test_a_replica_with_three_models_never_imports_torch(
    tmp_path_factory: pytest.TempPathFactory, figure: Callable[[str], None]
) -> None:
    """Loaded as ``python -m classifier_service`` loads them, warmed up to batch 4, used once."""
    exported.export(tmp_path_factory)
    code = (
        "import json, os, sys\n"
        "from classifier_service.inference import classify_batch, warm_up\n"
        "from classifier_service.models import load_models\n"
        "from classifier_service.settings import ClassifierSettings\n"
        "models = load_models(ClassifierSettings.from_env(os.environ))\n"
        "image = open('images/coffee.jpg', 'rb').read()\n"
        "for model in models.values():\n"
        "    warm_up(model, 4)\n"
        "    classify_batch(model, [image] * 4)\n"
        "status = dict(line.split(':', 1) for line in open('/proc/self/status'))\n"
        "print(json.dumps({'models': sorted(models), 'torch': 'torch' in sys.modules,\n"
        "                  'rss_kb': int(status['VmRSS'].split()[0])}))\n"
    )
    settings = exported.settings(exported.cache_dir(tmp_path_factory))
    env = {
        "PATH": "/usr/bin:/bin",
        "IMGQ_MODEL_CACHE": str(settings.model_cache),
        "IMGQ_MODEL_DIR": str(settings.model_dir),
        "IMGQ_RUNTIME": "onnxruntime",
    }
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True
    )
    report = json.loads(result.stdout.splitlines()[-1])
    # Each by its name (its default version) and by name@version.
    assert report["models"] == sorted([*CATALOG, *(f"{name}@1" for name in CATALOG)])
    assert report["torch"] is False
    rss_mb = report["rss_kb"] / 1024
    figure(f"replica with {len(CATALOG)} models under ONNX Runtime: {rss_mb:.0f} MB resident")
    assert rss_mb <= MAX_REPLICA_RSS_MB


def test_two_replicas_starting_together_export_once(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    settings = exported.settings(tmp_path, ["efficientnet_lite0"])
    results: list[object] = []

    def start() -> None:
        results.append(model_folders.resolve(settings)["efficientnet_lite0"].path)

    replicas = [threading.Thread(target=start) for _ in range(2)]
    for replica in replicas:
        replica.start()
    for replica in replicas:
        replica.join()
    assert len(results) == 2
    assert results[0] == results[1]
    # The exporters' logs (subprocesses, so read at the file descriptor).
    log = capfd.readouterr().err
    assert log.count("exported efficientnet_lite0 to ONNX") == 1, log
    assert log.count("efficientnet_lite0 is in the cache already") == 1, log


def test_without_its_weights_package_a_model_is_served_from_the_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The slim image: no torch, no weights packages, only the exported folders."""
    folders = exported.export(tmp_path_factory)
    monkeypatch.setattr(model_folders, "weights_path", lambda spec: None)
    monkeypatch.setattr(model_folders, "installed", lambda module: module != "torch")
    settings = exported.settings(exported.cache_dir(tmp_path_factory))
    assert model_folders.resolve(settings) == folders
    # And one the cache lacks stops the replica at start-up, saying what is missing.
    with pytest.raises(SettingsError, match=r"IMGQ_MODELS: .* not in the model cache .*torch"):
        model_folders.resolve(exported.settings(tmp_path_factory.mktemp("empty")))


def _settings(**env: str) -> ClassifierSettings:
    return ClassifierSettings.from_env(env)


def test_auto_runtime_is_onnx_runtime_where_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    assert choose_runtime(_settings()) is Runtime.ONNXRUNTIME
    assert choose_runtime(_settings(IMGQ_RUNTIME="torch")) is Runtime.TORCH
    monkeypatch.setattr(models, "installed", lambda module: module != "onnxruntime")
    assert choose_runtime(_settings()) is Runtime.TORCH
    with pytest.raises(SettingsError, match="IMGQ_RUNTIME=onnxruntime but onnxruntime"):
        choose_runtime(_settings(IMGQ_RUNTIME="onnxruntime"))


def test_runtime_and_device_settings_are_checked() -> None:
    assert _settings().runtime is Runtime.AUTO
    assert _settings(IMGQ_RUNTIME="ONNXRuntime", IMGQ_DEVICE="cpu").device is Device.CPU
    with pytest.raises(SettingsError, match="IMGQ_RUNTIME must be one of auto, onnxruntime, torch"):
        _settings(IMGQ_RUNTIME="openvino")
    with pytest.raises(SettingsError, match="IMGQ_DEVICE must be one of auto, cpu, cuda"):
        _settings(IMGQ_DEVICE="gpu")
    with pytest.raises(SettingsError, match="IMGQ_DEVICE=cuda needs IMGQ_RUNTIME=onnxruntime"):
        models.load_models(_settings(IMGQ_RUNTIME="torch", IMGQ_DEVICE="cuda"))


def test_cuda_is_used_where_its_provider_is_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu, cuda = onnx_runtime.CPU, onnx_runtime.CUDA
    assert onnx_runtime.providers(Device.CPU) == [cpu]
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [cpu])
    assert onnx_runtime.providers(Device.AUTO) == [cpu]
    with pytest.raises(SettingsError, match="IMGQ_DEVICE=cuda but ONNX Runtime offers only"):
        onnx_runtime.providers(Device.CUDA)
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [cuda, cpu])
    assert onnx_runtime.providers(Device.AUTO) == [cuda, cpu]
    assert onnx_runtime.providers(Device.CUDA) == [cuda, cpu]
    assert onnx_runtime.providers(Device.CPU) == [cpu]


def test_sessions_use_the_replicas_threads_and_never_spin() -> None:
    options = onnx_runtime.session_options(3)
    assert options.intra_op_num_threads == 3
    assert options.inter_op_num_threads == 1
    assert options.execution_mode == onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    assert options.graph_optimization_level == onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
