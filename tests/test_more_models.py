"""torchvision classifiers are offered exactly when a replica has their weights file.

The suite cannot download anything, so the test writes its own weights file: a
mobilenet_v3_small with seeded random weights, saved under the name torchvision's downloader
would give the real one.  resnet18 is configured too, without a file, and must stay hidden.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from classifier_service import model_folders
from classifier_service.inference import classify_batch
from classifier_service.models import load_models
from classifier_service.preprocess import preprocess
from classifier_service.settings import ClassifierSettings, default_weights_dir
from classifier_service.torch_tools import torchvision_models
from classifier_service.torch_tools.prepare_models import prepare
from classifier_service.torch_tools.torch_forward import CATEGORIES
from shared.catalog import CATALOG
from shared.errors import SettingsError
from tests import api, exported
from tests.api import REPO
from tests.cluster import MODEL, Cluster

SMALL = "mobilenet_v3_small"
MISSING = "resnet18"
IMAGE = "coffee.jpg"
GALLERY = sorted((REPO / "images").glob("*.jpg"))


def write_weights(folder: Path, name: str = SMALL) -> Path:
    torch.manual_seed(1234)
    module = torchvision.models.get_model(name, weights=None)
    path = folder / torchvision_models.weights_file_name(name)
    torch.save(module.state_dict(), path)
    return path


# -- pure parts ---------------------------------------------------------------------------


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


def test_a_model_with_weights_is_exported_and_gives_the_eager_answers(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, caplog: pytest.LogCaptureFixture
) -> None:
    write_weights(tmp_path)
    settings = exported.settings(
        exported.cache_dir(tmp_path_factory),
        [MODEL],
        IMGQ_TORCHVISION_MODELS=f"{SMALL},{MISSING}",
        IMGQ_WEIGHTS_DIR=str(tmp_path),
        IMGQ_RUNTIME="onnxruntime",
    )
    models = load_models(settings)
    # Each by its name (the default version) and by name@version, from the repository.
    assert list(models) == [MODEL, f"{MODEL}@1", SMALL, f"{SMALL}@1"]
    assert f"model {MISSING} unavailable: weights file" in caplog.text
    small = models[SMALL]
    assert small.spec == torchvision_models.spec_for(SMALL)
    assert small.labels == CATEGORIES
    spec = small.spec
    batch = np.stack([preprocess(path.read_bytes(), spec) for path in GALLERY])
    eager = torchvision_models.build(SMALL, tmp_path)
    with torch.inference_mode():
        expected = eager(torch.from_numpy(batch)).numpy()
    got = small.forward(batch)
    assert np.abs(got - expected).max() <= 1e-3
    assert got.argmax(axis=1).tolist() == expected.argmax(axis=1).tolist()

    # Unknown to torchvision: the replica stops at start-up, naming it.
    with pytest.raises(SettingsError, match="resnet_18"):
        model_folders.resolve(
            exported.settings(
                exported.cache_dir(tmp_path_factory), [MODEL], IMGQ_TORCHVISION_MODELS="resnet_18"
            )
        )


def test_prepare_skips_present_files(tmp_path: Path) -> None:
    write_weights(tmp_path)
    assert prepare((SMALL,), tmp_path) == []


# -- through the running service -----------------------------------------------------------


def offered(base_url: str) -> dict[str, dict[str, object]]:
    return {m["name"]: m for m in api.get(base_url, "/info").json()["models"]}


@pytest.mark.broker
def test_a_model_with_weights_is_offered_and_one_without_is_not(
    cluster: Cluster, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    write_weights(tmp_path)
    replica = cluster.start_replica(
        IMGQ_MODELS=MODEL,
        IMGQ_TORCHVISION_MODELS=f"{SMALL},{MISSING}",
        IMGQ_WEIGHTS_DIR=str(tmp_path),
        # The session's exports (Lite0 is there already; mobilenet is exported on start).
        IMGQ_MODEL_CACHE=str(exported.cache_dir(tmp_path_factory)),
    )
    _, url = cluster.start_gateway(IMGQ_MODELS=MODEL)
    cluster.wait_replicas(1)
    deadline = time.monotonic() + 60
    while SMALL not in offered(url) and time.monotonic() < deadline:
        time.sleep(0.2)

    models = offered(url)
    assert models[SMALL]["online"] is True
    assert models[SMALL]["input_size"] == 224
    assert models[SMALL]["replicas"] == 1
    assert set(models) == {MODEL, SMALL}, "resnet18 has no weights file: never offered"
    assert f"model {MISSING} unavailable" in replica.log_tail(100_000)

    job = api.submit(url, SMALL, IMAGE)
    done = api.wait_final(url, job["job_id"])
    assert done["status"] == "succeeded", done
    assert len(done["result"]) == 5
    # The same state dict, loaded and run the same way in this process.
    model = torchvision_models.load(SMALL, tmp_path)
    assert model is not None
    (expected,) = classify_batch(model, [(REPO / "images" / IMAGE).read_bytes()])
    assert not isinstance(expected, Exception)
    assert done["result"][0]["class_index"] == expected[0].class_index

    refused = api.post_json(url, "/classifications", {"model": MISSING, "image": IMAGE})
    assert refused.status == 422
    problem = refused.json()
    assert problem["code"] == "unknown_model"
    assert SMALL in problem["allowed"]
    assert MISSING not in problem["allowed"]
