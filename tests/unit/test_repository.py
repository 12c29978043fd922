"""The model repository: folders read, default versions chosen, broken folders skipped."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from torch import nn

from classifier_service import models, onnx_models, repository
from classifier_service.loaded import LoadedModel
from classifier_service.models import keyed
from classifier_service.repository import BrokenModelFolder, NetworkFormat, scan, select
from classifier_service.settings import ClassifierSettings
from shared.catalog import split_model_id
from shared.errors import SettingsError
from shared.messages import AnnouncedModel, ReplicaHeartbeat
from tests import tiny_models
from tests.tiny_models import PREPROCESSING, write_folder

LABELS = ["red", "green", "blue"]


def onnx_folder(folder: Path, labels: list[str] = LABELS) -> Path:
    """A folder whose network file need not run (scanning never loads it)."""
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(b"not read by the scan")
    return write_folder(folder, {"format": "onnx", "file": "model.onnx"}, labels)


@pytest.fixture(scope="module")
def untrained() -> nn.Module:
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 3)).eval()


def test_a_folder_reads_as_its_preprocessing_labels_and_network(tmp_path: Path) -> None:
    folder = onnx_folder(tmp_path / "colours" / "1")
    found = repository.read_folder(folder)
    assert found.id == "colours@1"
    assert found.format is NetworkFormat.ONNX
    assert found.network_file == folder / "model.onnx"
    assert found.labels == ("red", "green", "blue")
    assert (found.spec.input_size, found.spec.resize_size) == (32, 32)
    assert found.spec.mean == found.spec.std == (0.5, 0.5, 0.5)
    assert found.spec.title == "Tiny colours"
    assert found.builtin is False


def test_the_default_version_is_the_named_one_else_the_highest(tmp_path: Path) -> None:
    for version in ("2", "9", "10"):
        onnx_folder(tmp_path / "natural" / version)
    for version in ("1", "2"):
        onnx_folder(tmp_path / "named" / version)
    (tmp_path / "named" / "default").write_text("1\n")
    found = scan(tmp_path)
    assert [f.id for f in found.folders] == [
        "named@1",
        "named@2",
        "natural@2",
        "natural@9",
        "natural@10",
    ]
    assert found.defaults == {"natural": "10", "named": "1"}


def test_a_default_naming_a_missing_version_leaves_only_versioned_ids(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    onnx_folder(tmp_path / "colours" / "1")
    (tmp_path / "colours" / "default").write_text("3")
    found = scan(tmp_path)
    assert found.defaults == {}
    assert "model colours has no default version" in caplog.text


BROKEN = {
    "bad JSON": (lambda f: (f / "model.json").write_text("{nope"), "not readable JSON"),
    "no model.json": (lambda f: (f / "model.json").unlink(), "no model.json"),
    "no labels": (lambda f: (f / "labels.txt").unlink(), "no labels.txt"),
    "one label": (lambda f: (f / "labels.txt").write_text("red\n"), "has 1 labels"),
    "blank label": (lambda f: (f / "labels.txt").write_text("red\n\nblue\n"), "blank line 2"),
    "network missing": (lambda f: (f / "model.onnx").unlink(), "network file model.onnx"),
}


@pytest.mark.parametrize("case", BROKEN)
def test_a_broken_folder_is_skipped_with_its_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    good = onnx_folder(tmp_path / "colours" / "1")
    bad = onnx_folder(tmp_path / "colours" / "2")
    breaks, reason = BROKEN[case]
    breaks(bad)
    with caplog.at_level(logging.WARNING):
        found = scan(tmp_path)
    assert [f.path for f in found.folders] == [good]
    assert found.defaults == {"colours": "1"}
    assert [path for path, _ in found.broken] == [bad]
    assert reason in found.broken[0][1]
    assert f"model folder {bad} skipped: " in caplog.text
    assert reason in caplog.text


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"network": {"format": "keras", "file": "model.onnx"}}, "network.format must be one of"),
        ({"network": {"format": "onnx", "file": "../model.onnx"}}, "network.file must name"),
        ({"network": {"format": "state_dict", "file": "model.onnx"}}, "needs network.architecture"),
        ({"preprocessing": {**PREPROCESSING, "input_size": 4}}, "input_size must be between"),
        ({"preprocessing": {**PREPROCESSING, "resize": 16}}, "resize must be between 32"),
        ({"preprocessing": {**PREPROCESSING, "crop": "top"}}, "crop must be 'center'"),
        ({"preprocessing": {**PREPROCESSING, "mean": [0.5, 0.5]}}, "mean must be 3 numbers"),
        ({"preprocessing": {**PREPROCESSING, "std": [0.5, 0, 0.5]}}, "std must be positive"),
        ({"preprocessing": {**PREPROCESSING, "interpolation": "lanczos"}}, "interpolation"),
        ({"preprocessing": None}, "needs a 'preprocessing' object"),
        ({"title": ""}, "title must be a non-empty string"),
    ],
)
def test_each_bad_field_is_named(tmp_path: Path, change: dict[str, object], reason: str) -> None:
    folder = onnx_folder(tmp_path / "colours" / "1")
    data = json.loads((folder / "model.json").read_text())
    (folder / "model.json").write_text(json.dumps({**data, **change}))
    with pytest.raises(BrokenModelFolder, match=reason.replace("(", r"\(")):
        repository.read_folder(folder)


def test_names_and_versions_are_validated(tmp_path: Path) -> None:
    onnx_folder(tmp_path / "Colours" / "1")
    onnx_folder(tmp_path / "colours" / "v 1")
    onnx_folder(tmp_path / "colours" / "v1.2-rc_3")
    found = scan(tmp_path)
    assert [f.id for f in found.folders] == ["colours@v1.2-rc_3"]
    assert sorted(path.name for path, _ in found.broken) == ["Colours", "v 1"]
    assert split_model_id("colours") == ("colours", None)
    assert split_model_id("colours@v1.2-rc_3") == ("colours", "v1.2-rc_3")
    for bad in ("Colours", "colours@", "colours@.1", "@1", "a/b", "colours@1@2", ""):
        assert split_model_id(bad) is None, bad


def test_serve_narrows_and_unconfigured_builtins_are_not_served(tmp_path: Path) -> None:
    for name in ("colours", "shapes"):
        onnx_folder(tmp_path / name / "1")
        onnx_folder(tmp_path / name / "2")
    builtin = onnx_folder(tmp_path / "efficientnet_lite1" / "1")
    data = json.loads((builtin / "model.json").read_text())
    (builtin / "model.json").write_text(json.dumps({**data, "builtin": True}))
    found = scan(tmp_path)

    everything = select(found, ["efficientnet_lite0"], [])
    ids = ["colours@1", "colours@2", "shapes@1", "shapes@2"]
    assert [f.id for f in everything.folders] == ids
    assert everything.defaults(ids) == {"colours": "2", "shapes": "2"}
    # A version that fails to load is no default: the next highest is.
    assert everything.defaults(["colours@1", "shapes@2"]) == {"colours": "1", "shapes": "2"}
    # Configured, a built-in comes first.
    assert select(found, ["efficientnet_lite1"], []).folders[0].id == "efficientnet_lite1@1"

    narrowed = select(found, [], ["colours", "shapes@1"])
    assert [f.id for f in narrowed.folders] == ["colours@1", "colours@2", "shapes@1"]
    # shapes@2, its default, is not served: plain "shapes" is not accepted.
    assert narrowed.defaults(["colours@1", "colours@2", "shapes@1"]) == {"colours": "2"}

    with pytest.raises(SettingsError, match="IMGQ_SERVE"):
        ClassifierSettings.from_env({"IMGQ_SERVE": "colours,Shapes@1"})
    settings = ClassifierSettings.from_env({"IMGQ_SERVE": "colours, shapes@1"})
    assert settings.serve == ("colours", "shapes@1")


def test_models_are_keyed_by_every_id_a_request_may_use(tmp_path: Path) -> None:
    folders = scan(tmp_path).folders  # empty: make LoadedModels directly
    assert folders == ()
    one, two = (
        LoadedModel(
            repository.read_folder(onnx_folder(tmp_path / "colours" / v)).spec,
            lambda batch: batch,
            tuple(LABELS),
            version=v,
        )
        for v in ("1", "2")
    )
    models = keyed([one, two], {"colours": "2"})
    assert list(models) == ["colours@1", "colours", "colours@2"]
    assert models["colours"] is models["colours@2"] is two


def _settings(tmp_path: Path) -> ClassifierSettings:
    return ClassifierSettings.from_env(
        {"IMGQ_MODEL_DIR": str(tmp_path), "IMGQ_MODEL_CACHE": str(tmp_path / "cache")}
    )


def test_a_network_that_disagrees_with_its_labels_or_fails_is_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, untrained: nn.Module
) -> None:
    good = tiny_models.write_onnx(tmp_path / "colours" / "1", untrained, LABELS)
    four = tiny_models.write_onnx(tmp_path / "colours" / "2", untrained, [*LABELS, "black"])
    garbage = onnx_folder(tmp_path / "colours" / "3")
    folders = scan(tmp_path).folders
    with caplog.at_level(logging.WARNING):
        loaded = onnx_models.load_folders(folders, _settings(tmp_path))
    assert [model.id for model in loaded] == ["colours@1"]
    assert f"model folder {four} skipped: the network outputs (3,) per image but labels.txt" in (
        caplog.text
    )
    assert f"model folder {garbage} skipped: ONNX Runtime cannot load model.onnx" in caplog.text
    assert good.name == "1"
    logits = loaded[0].forward(np.zeros((2, 3, 32, 32), dtype=np.float32))
    assert logits.shape == (2, 3)


def test_torchscript_is_served_only_where_the_operator_allows_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, untrained: nn.Module
) -> None:
    """A TorchScript file runs its own code when loaded: by default its folder is skipped,
    saying which setting serves it, and the exporter refuses it too (run by hand)."""
    from classifier_service.torch_tools.export import network_source

    onnx = tiny_models.write_onnx(tmp_path / "colours" / "1", untrained, LABELS)
    script = tiny_models.write_torchscript(tmp_path / "colours" / "2", untrained, LABELS)
    found = scan(tmp_path)
    assert [f.format for f in found.folders] == [NetworkFormat.ONNX, NetworkFormat.TORCHSCRIPT]
    with caplog.at_level(logging.WARNING):
        kept = models.allowed(found.folders, _settings(tmp_path))
    assert [f.path for f in kept] == [onnx]
    assert (
        f"model folder {script} skipped: its network is TorchScript, which runs its own code "
        "when loaded; IMGQ_ALLOW_TORCHSCRIPT=true serves it"
    ) in caplog.text
    # Skipped like a folder that fails to load: the default is the highest version left.
    selection = select(found, [], [])
    assert selection.defaults([f.id for f in kept]) == {"colours": "1"}
    _, refused = network_source(script, allow_torchscript=False)
    assert isinstance(refused, str)
    assert "IMGQ_ALLOW_TORCHSCRIPT=true allows it" in refused

    allowed = ClassifierSettings.from_env(
        {"IMGQ_MODEL_DIR": str(tmp_path), "IMGQ_ALLOW_TORCHSCRIPT": "true"}
    )
    assert models.allowed(found.folders, allowed) == list(found.folders)
    assert not isinstance(network_source(script, allow_torchscript=True)[1], str)
    with pytest.raises(SettingsError, match="IMGQ_ALLOW_TORCHSCRIPT must be true or false"):
        ClassifierSettings.from_env({"IMGQ_ALLOW_TORCHSCRIPT": "yes please"})


def test_heartbeats_announce_versions_and_read_old_ones() -> None:
    info = AnnouncedModel("Tiny", 32, "colours", "2", default=True, classes=3, precision="bf16")
    beat = ReplicaHeartbeat("r1", ("colours", "colours@2"), 0, False, 5.0, 1.0, {"colours@2": info})
    assert ReplicaHeartbeat.from_json(beat.to_json()) == beat
    old = (
        b'{"v": 2, "replica": "r0", "models": ["efficientnet_lite0"], "jobs_done": 3,'
        b' "interval": 5,'
        b' "at": 1, "model_info": {"resnet18": {"title": "ResNet", "input_size": 224}}}'
    )
    announced = ReplicaHeartbeat.from_json(old).model_info["resnet18"]
    assert announced == AnnouncedModel("ResNet", 224, "resnet18", "1", True, 1000, "fp32")
