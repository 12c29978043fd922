"""The model and its preprocessing, in-process: real weights, real images, the replica's runtime."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from classifier_service import inference
from classifier_service.inference import classify_batch
from classifier_service.loaded import LoadedModel
from classifier_service.preprocess import Pixels, decode, preprocess
from classifier_service.torch_tools import runtime as torch_runtime
from classifier_service.torch_tools.efficientnet_lite import EfficientNetLite
from classifier_service.torch_tools.torch_forward import CATEGORIES
from shared.catalog import CATALOG, ModelSpec
from shared.errors import ImageDecodeError
from tests import exported
from tests.api import REPO
from tests.odd_images import scan_bomb

LITE0 = CATALOG["efficientnet_lite0"]
GALLERY = sorted((REPO / "images").glob("*.jpg"))


@pytest.fixture(scope="module")
def lite0(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    """Lite0 as a replica runs it by default: exported to ONNX, under ONNX Runtime."""
    return exported.load_onnx(tmp_path_factory, [LITE0.name])[LITE0.name]


def _jpeg(size: tuple[int, int], mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, (128, 128, 128) if mode == "RGB" else 128).save(out, "JPEG")
    return out.getvalue()


def test_categories_are_the_imagenet_list(lite0: LoadedModel) -> None:
    assert len(CATEGORIES) == 1000
    assert CATEGORIES[281] == "tabby"
    assert CATEGORIES[967] == "espresso"
    # The exported folder's labels.txt, which the replica reads instead of torchvision.
    assert lite0.labels == CATEGORIES


@pytest.mark.parametrize(
    ("name", "blocks"), [("efficientnet_lite0", 16), ("efficientnet_lite2", 21)]
)
def test_architecture_matches_the_published_layout(name: str, blocks: int) -> None:
    model = EfficientNetLite(name)
    assert len(model._blocks) == blocks
    # Same padding as TensorFlow: the stem halves the input, rounding up.
    assert model._conv_stem(torch.zeros(1, 3, 225, 225)).shape[-1] == 113


def test_preprocessing_matches_the_training_setup() -> None:
    array = preprocess(_jpeg((640, 480)), LITE0)
    assert array.shape == (3, 224, 224)
    assert array.dtype == np.float32
    # Mid-grey maps to about 0 with mean = std = 0.5, the normalisation these weights expect.
    assert np.abs(array).max() < 0.02


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
    assert [label.score for label in first] == sorted(
        (label.score for label in first), reverse=True
    )
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


def test_both_runtimes_give_the_same_top5(lite0: LoadedModel) -> None:
    frozen = torch_runtime.load(LITE0)
    images = [path.read_bytes() for path in GALLERY]
    for ours, reference in zip(
        classify_batch(lite0, images), classify_batch(frozen, images), strict=True
    ):
        assert not isinstance(ours, ImageDecodeError)
        assert not isinstance(reference, ImageDecodeError)
        assert [x.class_index for x in ours] == [x.class_index for x in reference]
        assert [x.score for x in ours] == pytest.approx([x.score for x in reference], abs=1e-4)


def test_everything_the_worker_imports_leaves_torch_out() -> None:
    """The serving path must not load torch (memory, and no fork with torch loaded), nor the
    classifier's torch tooling, which is kept apart for that reason."""
    code = (
        "import sys\n"
        "import classifier_service.__main__, classifier_service.worker\n"
        "from classifier_service.inference import configure_threads\n"
        "configure_threads(1)\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'torchvision'}\n"
        "    or m.startswith('classifier_service.torch_tools'))\n"
        "print(loaded)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]", result.stdout


def test_odd_images_fail_alone_and_their_neighbours_succeed(
    lite0: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    coffee = (REPO / "images" / "coffee.jpg").read_bytes()
    cat = (REPO / "images" / "cat.jpg").read_bytes()
    gif = io.BytesIO()
    Image.open(io.BytesIO(coffee)).save(gif, "GIF")
    # An error decode() does not expect (a plugin's IndexError, say) must not escape either.
    real = inference.preprocess

    def preprocess_or_trip(data: bytes, spec: ModelSpec, out: Pixels | None = None) -> Pixels:
        if data == b"trips a plugin":
            raise IndexError("list index out of range")
        return real(data, spec, out)

    monkeypatch.setattr(inference, "preprocess", preprocess_or_trip)
    images = [coffee, scan_bomb(500), gif.getvalue(), b"trips a plugin", cat]
    results = classify_batch(lite0, images)
    failed = [r for r in results if isinstance(r, ImageDecodeError)]
    assert [str(r) for r in failed] == [
        "refused to decode: the JPEG has 500 scans; the limit is 100 (a photo has 1 to about "
        "10, and each one costs the decoder a pass over the whole image)",
        "cannot decode image: not an image in an accepted format (JPEG, PNG, WebP)",
        "cannot decode image: IndexError: list index out of range",
    ]
    first, last = results[0], results[-1]
    assert not isinstance(first, ImageDecodeError)
    assert not isinstance(last, ImageDecodeError)
    # The same answers as each image classified on its own.
    for batched, (alone,) in (
        (first, classify_batch(lite0, [coffee])),
        (last, classify_batch(lite0, [cat])),
    ):
        assert not isinstance(alone, ImageDecodeError)
        assert [x.class_index for x in batched] == [x.class_index for x in alone]
        assert [x.score for x in batched] == pytest.approx([x.score for x in alone], abs=1e-4)
