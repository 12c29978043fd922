"""The classifier's speed settings change the speed only: the same answers as the plain model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from classifier_service.inference import warm_up
from classifier_service.models import LoadedModel, load
from classifier_service.preprocess import crop_box, decode, preprocess, to_tensor
from shared.catalog import CATALOG, ModelSpec
from tests.api import REPO

GALLERY = sorted((REPO / "images").glob("*.jpg"))
LITE0 = CATALOG["efficientnet_lite0"]


def _batch(spec: ModelSpec) -> torch.Tensor:
    return torch.stack([preprocess(path.read_bytes(), spec) for path in GALLERY])


@pytest.mark.parametrize("name", sorted(CATALOG))
def test_frozen_model_gives_the_eager_models_top5(name: str) -> None:
    spec = CATALOG[name]
    eager, frozen = load(spec, optimise=False), load(spec)
    batch = _batch(spec)
    with torch.inference_mode():
        expected = eager.module(batch).softmax(dim=1).topk(5)
        got = frozen.module(batch).softmax(dim=1).topk(5)
    assert got.indices.tolist() == expected.indices.tolist()
    assert torch.allclose(got.values, expected.values, atol=1e-4)


@pytest.fixture(scope="module")
def lite0() -> LoadedModel:
    return load(LITE0)


def test_frozen_model_takes_any_batch_size(lite0: LoadedModel) -> None:
    batch = _batch(LITE0)
    with torch.inference_mode():
        together = lite0.module(batch)
        one_by_one = torch.cat([lite0.module(image[None]) for image in batch])
    assert together.argmax(dim=1).tolist() == one_by_one.argmax(dim=1).tolist()
    assert torch.allclose(together, one_by_one, atol=1e-3)


class _Recorder(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.batch_sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batch_sizes.append(x.shape[0])
        out: torch.Tensor = self.inner(x)
        return out


def test_warm_up_runs_every_batch_shape_up_to_the_batch_size(lite0: LoadedModel) -> None:
    recorder = _Recorder(lite0.module)
    warm_up(LoadedModel(lite0.spec, recorder), batch_size=3)
    # Twice each: a frozen graph specialises on its first calls at a new shape.
    assert recorder.batch_sizes == [1, 1, 2, 2, 3, 3]


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
    ours = preprocess(path.read_bytes(), LITE0)
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
    assert to_tensor(white, LITE0).min() == pytest.approx(1.0)
    assert to_tensor(black, LITE0).max() == pytest.approx(-1.0)
