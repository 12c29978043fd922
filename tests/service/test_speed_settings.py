"""The classifier's speed settings change the speed only: the same answers as the plain model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from classifier_service.inference import warm_up
from classifier_service.loaded import LoadedModel
from classifier_service.preprocess import Pixels, crop_box, decode, preprocess, to_array
from classifier_service.torch_tools.runtime import load
from shared.catalog import CATALOG, ModelSpec
from tests.api import REPO

GALLERY = sorted((REPO / "images").glob("*.jpg"))
LITE0 = CATALOG["efficientnet_lite0"]


def _batch(spec: ModelSpec) -> Pixels:
    return np.stack([preprocess(path.read_bytes(), spec) for path in GALLERY])


@pytest.mark.parametrize("name", sorted(CATALOG))
def test_frozen_model_gives_the_eager_models_top5(name: str) -> None:
    spec = CATALOG[name]
    eager, frozen = load(spec, optimise=False), load(spec)
    batch = _batch(spec)
    expected = torch.from_numpy(eager.forward(batch)).softmax(dim=1).topk(5)
    got = torch.from_numpy(frozen.forward(batch)).softmax(dim=1).topk(5)
    assert got.indices.tolist() == expected.indices.tolist()
    assert torch.allclose(got.values, expected.values, atol=1e-4)


@pytest.fixture(scope="module")
def lite0() -> LoadedModel:
    return load(LITE0)


def test_frozen_model_takes_any_batch_size(lite0: LoadedModel) -> None:
    batch = _batch(LITE0)
    together = lite0.forward(batch)
    one_by_one = np.concatenate([lite0.forward(batch[i : i + 1]) for i in range(len(batch))])
    assert together.argmax(axis=1).tolist() == one_by_one.argmax(axis=1).tolist()
    assert np.abs(together - one_by_one).max() <= 1e-3


def test_warm_up_runs_every_batch_shape_up_to_the_batch_size(lite0: LoadedModel) -> None:
    batch_sizes: list[int] = []

    def recorder(batch: Pixels) -> np.ndarray:
        batch_sizes.append(batch.shape[0])
        return lite0.forward(batch)

    warm_up(LoadedModel(lite0.spec, recorder, lite0.labels), batch_size=3)
    # Twice each: a frozen graph specialises on its first calls at a new shape.
    assert batch_sizes == [1, 1, 2, 2, 3, 3]


@pytest.mark.parametrize("path", GALLERY, ids=lambda p: p.name)
def test_cropped_resize_matches_resize_then_crop(path: Path) -> None:
    """Resizing only the crop's region is the same arithmetic as torchvision's resize then
    centre crop, up to one grey level where Pillow rounds a filter weight differently."""
    image = decode(path.read_bytes(), LITE0)
    resized = TF.resize(
        image, [LITE0.resize_size], interpolation=TF.InterpolationMode.BILINEAR, antialias=True
    )
    cropped = TF.center_crop(resized, [LITE0.input_size, LITE0.input_size])
    reference = TF.normalize(
        TF.to_dtype(TF.pil_to_tensor(cropped), torch.float32, scale=True), [0.5] * 3, [0.5] * 3
    )
    ours = torch.from_numpy(preprocess(path.read_bytes(), LITE0))
    one_grey_level = 2 / 255  # after normalising with std 0.5
    assert ours.shape == reference.shape
    assert (ours - reference).abs().max() <= one_grey_level + 1e-6


def test_crop_box_is_the_centre_of_the_resized_image() -> None:
    # 448 x 448 -> resized to 256 (x 1/1.75) -> centre 224 starts 16 px in, i.e. 28 source px.
    assert crop_box(448, 448, LITE0) == pytest.approx((28, 28, 420, 420))
    # Portrait: the short side (width) sets the scale, the crop is centred vertically.
    left, top, right, bottom = crop_box(256, 512, LITE0)
    assert (left, right) == (16, 240)
    assert top == pytest.approx(512 - bottom)


def test_preprocessing_normalises_like_the_training_setup() -> None:
    white = Image.new("RGB", (300, 300), (255, 255, 255))
    black = Image.new("RGB", (300, 300), (0, 0, 0))
    assert to_array(white, LITE0).min() == pytest.approx(1.0)
    assert to_array(black, LITE0).max() == pytest.approx(-1.0)
