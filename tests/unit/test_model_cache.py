"""The model cache's folders: complete or absent, written once under the lock, found by weights.

These tests write small stand-in folders (no torch, no export): what is under test is the
layout, the lock and the atomic rename, which the export relies on, and what the exporter
subprocess is started with.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from classifier_service import model_cache, model_folders, repository
from classifier_service.model_cache import ExportedModel
from classifier_service.repository import ModelFolder
from classifier_service.settings import ClassifierSettings, default_model_cache
from shared.catalog import ModelSpec

SPEC = ModelSpec("mobilenet_v3_small", "mobilenet_v3_small (torchvision)", 224, resize=256)
SHA = "ab" * 32


def writer(
    spec: ModelSpec = SPEC, sha: str = SHA, calls: list[Path] | None = None
) -> Callable[[Path], ExportedModel]:
    """A stand-in for the exporter's write_folder: same files, same order, model.json last."""

    def write(folder: Path) -> ExportedModel:
        if calls is not None:
            calls.append(folder)
        time.sleep(0.2)  # long enough for a second writer to arrive and wait on the lock
        (folder / model_cache.MODEL_FILE).write_bytes(b"onnx")
        (folder / model_cache.LABELS_FILE).write_text("a\nb\n")
        exported = ExportedModel(folder, spec, sha, "w.pth", 18, "2.14.1")
        model_cache.write_metadata(exported)
        return exported

    return write


def test_a_published_folder_describes_itself(tmp_path: Path) -> None:
    exported, written = model_cache.publish(tmp_path, SPEC.name, SHA, writer())
    assert written
    assert exported.path == tmp_path / SPEC.name / SHA
    assert exported.serves(SPEC)
    assert (exported.spec.input_size, exported.spec.resize_size) == (224, 256)
    assert exported.weights_file == "w.pth"
    assert exported.labels() == ("a", "b")
    assert model_cache.find(tmp_path, SPEC.name, SHA) == exported
    assert model_cache.find(tmp_path, SPEC.name, "cd" * 32) is None
    # Nothing but the folder and the lock is left behind.
    assert sorted(p.name for p in (tmp_path / SPEC.name).iterdir()) == [".lock", SHA]


def test_writers_arriving_together_write_once(tmp_path: Path) -> None:
    calls: list[Path] = []
    results: list[tuple[ExportedModel, bool]] = []
    threads = [
        threading.Thread(
            target=lambda: results.append(
                model_cache.publish(tmp_path, SPEC.name, SHA, writer(calls=calls))
            )
        )
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1
    assert sorted(written for _, written in results) == [False, False, True]
    assert len({exported.path for exported, _ in results}) == 1


def test_a_failed_write_leaves_nothing_and_the_next_one_succeeds(tmp_path: Path) -> None:
    def broken(folder: Path) -> ExportedModel:
        (folder / model_cache.MODEL_FILE).write_bytes(b"half a mod")
        raise RuntimeError("export failed")

    with pytest.raises(RuntimeError, match="export failed"):
        model_cache.publish(tmp_path, SPEC.name, SHA, broken)
    assert model_cache.find(tmp_path, SPEC.name, SHA) is None
    assert [p.name for p in (tmp_path / SPEC.name).iterdir()] == [".lock"]
    _, written = model_cache.publish(tmp_path, SPEC.name, SHA, writer())
    assert written


def test_a_folder_without_its_metadata_is_not_there(tmp_path: Path) -> None:
    """What a writer that died mid-way leaves (under its temporary name, or renamed by hand)."""
    folder = model_cache.folder(tmp_path, SPEC.name, SHA)
    folder.mkdir(parents=True)
    (folder / model_cache.MODEL_FILE).write_bytes(b"half")
    leftover = tmp_path / SPEC.name / ".tmp-dead-writer"
    leftover.mkdir()
    assert model_cache.find(tmp_path, SPEC.name, SHA) is None
    assert model_cache.exported_versions(tmp_path, SPEC.name) == []
    exported, written = model_cache.publish(tmp_path, SPEC.name, SHA, writer())
    assert written
    assert exported.labels() == ("a", "b")
    assert not leftover.exists()


def test_a_folder_of_another_format_or_input_size_is_replaced(tmp_path: Path) -> None:
    exported, _ = model_cache.publish(tmp_path, SPEC.name, SHA, writer())
    metadata = exported.path / model_cache.METADATA_FILE
    metadata.write_text(metadata.read_text().replace('"format": 1', '"format": 0'))
    assert model_cache.find(tmp_path, SPEC.name, SHA) is None
    _, written = model_cache.publish(tmp_path, SPEC.name, SHA, writer())
    assert written

    larger = ModelSpec(SPEC.name, SPEC.title, 256, resize=288)
    _, written = model_cache.publish(
        tmp_path, SPEC.name, SHA, writer(larger), wanted=lambda e: e.serves(larger)
    )
    assert written
    found = model_cache.find(tmp_path, SPEC.name, SHA)
    assert found is not None
    assert found.spec.input_size == 256


def test_torchvision_folders_are_found_by_the_weights_file_they_recorded(tmp_path: Path) -> None:
    cache, weights = tmp_path / "cache", tmp_path / "weights"
    weights.mkdir()
    (weights / "w.pth").write_bytes(b"first weights")
    first = model_cache.sha256_file(weights / "w.pth")
    model_cache.publish(cache, SPEC.name, first, writer(sha=first))
    found = model_folders.torchvision_folder(cache, SPEC.name, weights)
    assert found is not None
    assert found.weights_sha256 == first
    # New weights under the same name: the old folder must not serve them.
    (weights / "w.pth").write_bytes(b"second weights")
    assert model_folders.torchvision_folder(cache, SPEC.name, weights) is None
    # No weights here at all (an image without them): the newest export is served.
    (weights / "w.pth").unlink()
    model_cache.publish(cache, SPEC.name, "cd" * 32, writer(sha="cd" * 32))
    os.utime(cache / SPEC.name / first / model_cache.METADATA_FILE, (0, 0))
    newest = model_folders.torchvision_folder(cache, SPEC.name, weights)
    assert newest is not None
    assert newest.weights_sha256 == "cd" * 32
    assert model_folders.torchvision_folder(cache, "resnet18", weights) is None


def test_the_exporter_inherits_no_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """It loads networks from the model repository (a TorchScript file runs its own code), so
    it gets an allow-list of the replica's environment: no broker URL, password or token."""
    secrets = {
        "IMGQ_BROKER_URL": "amqp://imgq-classifier:hunter2@rabbit:5672/",
        "IMGQ_BROKER_URLS": "amqp://imgq-classifier:hunter2@rabbit-1:5672/",
        "IMGQ_API_TOKENS": "tok1",
        "IMGQ_CLASSIFIER_PASSWORD": "hunter2",
        "OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer abc",
        "AWS_SECRET_ACCESS_KEY": "abc",
    }
    needed = {
        "PATH": "/usr/bin",
        "HOME": "/home/imgq",
        "IMGQ_MODEL_CACHE": str(tmp_path),
        "IMGQ_ALLOW_TORCHSCRIPT": "true",
        "IMGQ_INFERENCE_THREADS": "4",  # replaced by the replica's own count
    }
    env = model_folders.exporter_env({**secrets, **needed}, 2)
    assert env == {
        "PATH": "/usr/bin",
        "HOME": "/home/imgq",
        "IMGQ_MODEL_CACHE": str(tmp_path),
        "IMGQ_ALLOW_TORCHSCRIPT": "true",
        "IMGQ_INFERENCE_THREADS": "2",
        "OMP_NUM_THREADS": "2",
        "MKL_NUM_THREADS": "2",
    }
    # And that is what the exporter is started with.
    started: list[dict[str, str]] = []

    def run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        started.append(kwargs["env"])
        return subprocess.CompletedProcess(command, 1, stdout="")

    for name, value in {**secrets, **needed}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(model_folders.subprocess, "run", run)
    settings = ClassifierSettings.from_env({"IMGQ_MODEL_CACHE": str(tmp_path)})
    assert model_folders.repository_networks(settings, [_torchscript_folder(tmp_path)])
    (env_used,) = started
    assert not set(env_used) & set(secrets)
    assert "hunter2" not in repr(env_used)


def _torchscript_folder(tmp_path: Path) -> ModelFolder:
    folder = tmp_path / "repository" / "colours" / "1"
    folder.mkdir(parents=True)
    (folder / "model.pt").write_bytes(b"not read before the exporter runs")
    (folder / "labels.txt").write_text("red\ngreen\n")
    spec = {"format": "torchscript", "file": "model.pt"}
    preprocessing = {"input_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3}
    (folder / "model.json").write_text(
        json.dumps({"network": spec, "preprocessing": preprocessing})
    )
    return repository.read_folder(folder)


def test_default_cache_follows_xdg() -> None:
    assert default_model_cache({"XDG_CACHE_HOME": "/c"}) == Path("/c/imgq/models")
    assert default_model_cache({}) == Path("~/.cache/imgq/models").expanduser()
    settings = ClassifierSettings.from_env({"IMGQ_MODEL_CACHE": "/srv/models"})
    assert settings.model_cache == Path("/srv/models")
