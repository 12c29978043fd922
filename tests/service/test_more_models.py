"""torchvision classifiers are offered exactly when a replica has their weights file.

The suite cannot download anything, so the test writes its own weights file
(tests/torchvision_weights.py): a mobilenet_v3_small with seeded random weights, saved under
the name torchvision's downloader would give the real one.  resnet18 is configured too,
without a file, and must stay hidden (the pieces on their own: tests/unit/test_more_models.py)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from classifier_service import model_folders
from classifier_service.inference import classify_batch
from classifier_service.models import load_models
from classifier_service.preprocess import preprocess
from classifier_service.torch_tools import torchvision_models
from classifier_service.torch_tools.torch_forward import CATEGORIES
from shared.errors import SettingsError
from tests import api, exported
from tests.api import REPO
from tests.cluster import MODEL, Cluster
from tests.torchvision_weights import MISSING, SMALL, write_weights

IMAGE = "coffee.jpg"
GALLERY = sorted((REPO / "images").glob("*.jpg"))


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


def offered(base_url: str) -> dict[str, dict[str, object]]:
    return {m["name"]: m for m in api.get(base_url, "/info").json()["models"]}


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
