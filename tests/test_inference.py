"""The model and its preprocessing, in-process: real weights, real images."""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

from classifier_service.efficientnet_lite import EfficientNetLite
from classifier_service.inference import classify_batch
from classifier_service.models import CATEGORIES, LoadedModel, load
from classifier_service.preprocess import decode, preprocess
from shared.catalog import CATALOG
from shared.errors import ImageDecodeError
from tests.api import REPO

LITE0 = CATALOG["efficientnet_lite0"]


@pytest.fixture(scope="module")
def lite0() -> LoadedModel:
    return load(LITE0)


def _jpeg(size: tuple[int, int], mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, (128, 128, 128) if mode == "RGB" else 128).save(out, "JPEG")
    return out.getvalue()


def test_categories_are_the_imagenet_list() -> None:
    assert len(CATEGORIES) == 1000
    assert CATEGORIES[281] == "tabby"
    assert CATEGORIES[967] == "espresso"


@pytest.mark.parametrize(
    ("name", "blocks"), [("efficientnet_lite0", 16), ("efficientnet_lite2", 21)]
)
def test_architecture_matches_the_published_layout(name: str, blocks: int) -> None:
    model = EfficientNetLite(name)
    assert len(model._blocks) == blocks
    # Same padding as TensorFlow: the stem halves the input, rounding up.
    assert model._conv_stem(torch.zeros(1, 3, 225, 225)).shape[-1] == 113


def test_preprocessing_matches_the_training_setup() -> None:
    tensor = preprocess(_jpeg((640, 480)), LITE0)
    assert tensor.shape == (3, 224, 224)
    # Mid-grey maps to about 0 with mean = std = 0.5, the normalisation these weights expect.
    assert tensor.abs().max() < 0.02


def test_large_jpegs_decode_at_reduced_scale() -> None:
    image = decode(_jpeg((4000, 3000)), LITE0)
    assert image.mode == "RGB"
    # draft() picked a DCT scale, yet the short side still covers the model's resize step.
    assert min(image.size) >= LITE0.resize_size
    assert image.size[0] < 4000


def test_grayscale_images_become_rgb() -> None:
    assert preprocess(_jpeg((300, 300), "L"), LITE0).shape == (3, 224, 224)


@pytest.mark.parametrize("data", [b"", b"not an image", _jpeg((300, 300))[:200]])
def test_undecodable_bytes_raise_a_clear_error(data: bytes) -> None:
    with pytest.raises(ImageDecodeError, match="cannot decode image"):
        preprocess(data, LITE0)


def test_batch_classifies_each_image_and_fails_only_the_broken_one(lite0: LoadedModel) -> None:
    coffee = (REPO / "images" / "coffee.jpg").read_bytes()
    cat = (REPO / "images" / "cat.jpg").read_bytes()
    results = classify_batch(lite0, [coffee, b"garbage", cat])
    assert isinstance(results[1], ImageDecodeError)
    first, third = results[0], results[2]
    assert not isinstance(first, ImageDecodeError)
    assert not isinstance(third, ImageDecodeError)
    assert first[0].label == "espresso"
    assert third[0].label in {"Egyptian cat", "tiger cat", "tabby"}
    assert len(first) == 5
    assert 0.0 < sum(label.score for label in first) <= 1.0


def test_batched_and_single_inference_agree(lite0: LoadedModel) -> None:
    coffee = (REPO / "images" / "coffee.jpg").read_bytes()
    rocket = (REPO / "images" / "rocket.jpg").read_bytes()
    single = [classify_batch(lite0, [image])[0] for image in (coffee, rocket)]
    batched = classify_batch(lite0, [coffee, rocket])
    for one, many in zip(single, batched, strict=True):
        assert not isinstance(one, ImageDecodeError)
        assert not isinstance(many, ImageDecodeError)
        assert [x.class_index for x in one] == [x.class_index for x in many]
        assert [x.score for x in one] == pytest.approx([x.score for x in many], abs=1e-4)
