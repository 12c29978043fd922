"""The numpy preprocessing gives the very floats the torch code it replaced gave."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from classifier_service.preprocess import crop_resized, decode, preprocess, to_array
from shared.catalog import CATALOG, ModelSpec
from tests.api import REPO

GALLERY = sorted((REPO / "images").glob("*.jpg"))
# ImageNet's mean and std (torchvision's weights) as well as the catalogue's 0.5 / 0.5.
SPECS = [
    CATALOG["efficientnet_lite2"],
    ModelSpec("resnet50", "resnet50", 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 232),
]


def torch_reference(image: Image.Image, spec: ModelSpec) -> np.ndarray:
    """The replica's preprocessing before it dropped torch, line for line."""
    size = spec.input_size
    crop = crop_resized(image, spec)
    pixels = torch.frombuffer(bytearray(crop.tobytes()), dtype=torch.uint8)
    tensor = pixels.view(size, size, 3).permute(2, 0, 1).to(torch.float32)
    std = torch.tensor(spec.std).view(3, 1, 1)
    mean = torch.tensor(spec.mean).view(3, 1, 1)
    result: np.ndarray = tensor.mul_(1 / (255 * std)).sub_(mean / std).numpy()
    return result


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
@pytest.mark.parametrize("path", GALLERY, ids=lambda p: p.name)
def test_same_floats_as_the_torch_code(path: Path, spec: ModelSpec) -> None:
    ours = preprocess(path.read_bytes(), spec)
    reference = torch_reference(decode(path.read_bytes(), spec), spec)
    assert ours.dtype == reference.dtype == np.float32
    assert ours.flags.c_contiguous
    np.testing.assert_array_equal(ours, reference)


def test_writes_into_the_batch_it_is_given() -> None:
    spec = SPECS[0]
    batch = np.full((2, 3, spec.input_size, spec.input_size), np.nan, dtype=np.float32)
    image = Image.new("RGB", (400, 300), (255, 0, 128))
    assert np.shares_memory(to_array(image, spec, out=batch[1]), batch[1])
    assert np.isnan(batch[0]).all()
    red, green, blue = batch[1, :, 0, 0]
    assert (red, green) == (pytest.approx(1.0), pytest.approx(-1.0))
    assert blue == pytest.approx(128 / 127.5 - 1, abs=1e-6)
