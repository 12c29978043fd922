"""torchvision classifiers: the weights file's name, the spec taken from the weights'
transforms, the names checked, where weights are looked for, and that a missing file is
never loaded.

The suite cannot download anything, so the tests write their own weights file
(tests/torchvision_weights.py).  A replica offering them, and the exported model's answers:
tests/service/test_more_models.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from classifier_service.settings import ClassifierSettings, default_weights_dir
from classifier_service.torch_tools import torchvision_models
from classifier_service.torch_tools.prepare_models import prepare
from shared.catalog import CATALOG
from shared.errors import SettingsError
from tests.torchvision_weights import MISSING, SMALL, write_weights


def test_weights_file_is_the_one_torchvision_downloads() -> None:
    assert torchvision_models.weights_file_name(SMALL) == "mobilenet_v3_small-047dcff4.pth"
    assert torchvision_models.weights_file_name(MISSING) == "resnet18-f37072fd.pth"
    assert torchvision_models.weights_url(MISSING).endswith("/resnet18-f37072fd.pth")


def test_spec_comes_from_the_weights_transforms() -> None:
    spec = torchvision_models.spec_for(SMALL)
    assert (spec.name, spec.input_size, spec.resize_size) == (SMALL, 224, 256)
    assert spec.mean == pytest.approx((0.485, 0.456, 0.406))
    assert spec.std == pytest.approx((0.229, 0.224, 0.225))
    # A weights set with its own resize (232 for a 224 crop) keeps it.
    assert torchvision_models.spec_for("resnet50").resize_size == 232
    # The EfficientNet-Lite entries keep input + 32.
    assert CATALOG["efficientnet_lite0"].resize_size == 256
    assert CATALOG["efficientnet_lite2"].resize_size == 292


def test_torchvision_names_are_checked(tmp_path: Path) -> None:
    settings = ClassifierSettings.from_env(
        {"IMGQ_TORCHVISION_MODELS": f"{SMALL}, {MISSING}", "IMGQ_WEIGHTS_DIR": str(tmp_path)}
    )
    assert settings.torchvision_models == (SMALL, MISSING)
    assert settings.weights_dir == tmp_path
    assert ClassifierSettings.from_env({}).torchvision_models == ()
    # What torchvision knows is checked where torchvision is imported (the exporter, the torch
    # runtime): a replica under ONNX Runtime never imports it, not even for this.
    torchvision_models.check_names([SMALL, MISSING])
    for bad in ("resnet_18", "fasterrcnn_resnet50_fpn"):  # a typo; a detection model
        with pytest.raises(SettingsError, match=bad):
            torchvision_models.check_names([SMALL, bad])
    # A value that cannot be a model name at all fails with the settings.
    with pytest.raises(SettingsError, match="Resnet-18"):
        ClassifierSettings.from_env({"IMGQ_TORCHVISION_MODELS": f"{SMALL},Resnet-18"})


def test_default_weights_dir_is_torchs_hub_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", "/srv/torch")
    assert str(default_weights_dir({"TORCH_HOME": "/srv/torch"})) == (
        torch.hub.get_dir() + "/checkpoints"
    )
    assert default_weights_dir({"XDG_CACHE_HOME": "/c"}) == Path("/c/torch/hub/checkpoints")
    assert default_weights_dir({}) == Path("~/.cache/torch/hub/checkpoints").expanduser()


def test_missing_weights_are_not_loaded(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_weights(tmp_path)
    loaded = torchvision_models.load_available([SMALL, MISSING], tmp_path)
    assert list(loaded) == [SMALL]
    assert loaded[SMALL].spec.input_size == 224
    assert f"model {MISSING} unavailable" in caplog.text
    assert "prepare_models" in caplog.text


def test_prepare_skips_present_files(tmp_path: Path) -> None:
    write_weights(tmp_path)
    assert prepare((SMALL,), tmp_path) == []
