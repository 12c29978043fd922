"""The numpy preprocessing gives the very floats of the torch reference pipeline, from pixels
decoded as a viewer shows them."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms, ImageOps, PngImagePlugin

from classifier_service.preprocess import crop_resized, decode, preprocess, to_array
from shared.catalog import CATALOG, ModelSpec
from shared.errors import ImageDecodeError
from tests.api import REPO
from tests.odd_images import STORED, cmyk_profile, encode, mpo, scan_bomb, tagged

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


# -- real photos as people see them, and bytes no photo has -------------------------------------

LITE0 = CATALOG["efficientnet_lite0"]
COFFEE = Image.open(REPO / "images" / "coffee.jpg").convert("RGB")


def _plain_pillow(data: bytes, spec: ModelSpec) -> Image.Image:
    """What the replica did before orientation, MPO, 16-bit and CMYK were handled."""
    image = Image.open(io.BytesIO(data))
    image.draft("RGB", (spec.resize_size, spec.resize_size))
    return image.convert("RGB")


def _quadrants(size: tuple[int, int] = (400, 300)) -> Image.Image:
    """Four colours, one per quadrant: any turn or mirror shows."""
    image = Image.new("RGB", size, (255, 0, 0))
    width, height = size
    image.paste((0, 255, 0), (width // 2, 0, width, height // 2))
    image.paste((0, 0, 255), (0, height // 2, width // 2, height))
    image.paste((255, 255, 0), (width // 2, height // 2, width, height))
    return image


@pytest.mark.parametrize("path", GALLERY, ids=lambda p: p.name)
def test_ordinary_jpegs_decode_exactly_as_before(path: Path) -> None:
    data = path.read_bytes()
    for spec in SPECS:
        np.testing.assert_array_equal(
            np.asarray(decode(data, spec)), np.asarray(_plain_pillow(data, spec))
        )


@pytest.mark.parametrize("orientation", sorted(STORED))
def test_the_orientation_tag_turns_the_picture_upright(orientation: int) -> None:
    upright = _quadrants()
    # PNG is lossless, so the upright picture comes back pixel for pixel.
    data = tagged(upright, orientation, "PNG")
    stored = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert stored.shape != np.asarray(upright).shape or (stored != np.asarray(upright)).any()
    np.testing.assert_array_equal(np.asarray(decode(data, LITE0)), np.asarray(upright))


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_a_large_tagged_jpeg_is_decoded_at_reduced_scale_and_cropped_upright(
    orientation: int,
) -> None:
    upright = COFFEE.resize((1800, 1200), Image.Resampling.BILINEAR)
    data = tagged(upright, orientation, quality=95)
    reference = encode(upright, quality=95)
    ours, theirs = decode(data, LITE0), decode(reference, LITE0)
    # draft() decoded at 1/4 scale either way; turned upright, the sizes match.
    assert ours.size == theirs.size == (450, 300)
    # The same crop of the same picture: only JPEG's rounding differs.  (The sideways pixels
    # differ from the upright ones by about 0.5 on this scale.)
    difference = np.abs(preprocess(data, LITE0) - preprocess(reference, LITE0))
    assert difference.mean() < 0.02, difference.mean()


def test_an_mpo_is_decoded_by_its_first_frame() -> None:
    data = mpo(COFFEE, ImageOps.invert(COFFEE))
    assert Image.open(io.BytesIO(data)).format == "MPO"
    alone = encode(COFFEE, quality=90)
    np.testing.assert_array_equal(np.asarray(decode(data, LITE0)), np.asarray(decode(alone, LITE0)))


@pytest.mark.parametrize(("level", "grey"), [(0, 0), (128 * 257, 128), (9609, 37), (65535, 255)])
def test_sixteen_bit_greyscale_is_scaled_not_clipped(level: int, grey: int) -> None:
    data = encode(Image.fromarray(np.full((300, 400), level, dtype=np.uint16)), "PNG")
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    pixels = np.asarray(decode(data, LITE0))
    assert pixels.shape == (300, 400, 3)
    assert (pixels == grey).all()


def test_a_sixteen_bit_picture_looks_like_its_eight_bit_self() -> None:
    eight = np.asarray(COFFEE.convert("L"))
    data = encode(Image.fromarray(eight.astype(np.uint16) * 257), "PNG")
    expected = Image.fromarray(eight).convert("RGB")
    np.testing.assert_array_equal(np.asarray(decode(data, LITE0)), np.asarray(expected))
    # What plain convert() made of it: nearly white.
    assert np.asarray(_plain_pillow(data, LITE0)).mean() > 250


def test_a_cmyk_jpeg_goes_through_its_embedded_profile() -> None:
    # The profile says every ink mix prints this green; a viewer shows the photo all green.
    # (Black ink everywhere: Little CMS maps paper without ink to white whatever the profile.)
    cyan, magenta, yellow, _ = COFFEE.convert("CMYK").split()
    cmyk = Image.merge("CMYK", (cyan, magenta, yellow, Image.new("L", COFFEE.size, 128)))
    data = encode(cmyk, quality=95, icc_profile=cmyk_profile((60.0, -50.0, 40.0)))
    pixels = np.asarray(decode(data, LITE0)).astype(int)
    lab = ImageCms.createProfile("LAB")
    to_srgb = ImageCms.buildTransform(lab, ImageCms.createProfile("sRGB"), "LAB", "RGB")
    lab_pixel = Image.new("LAB", (1, 1), (153, 78, 168))  # L 60, a -50, b 40 in 8 bits
    expected = ImageCms.applyTransform(lab_pixel, to_srgb)
    assert expected is not None
    assert np.abs(pixels - np.array(expected.getpixel((0, 0)))).max() <= 3
    # Pillow's own conversion ignores the profile: the photo keeps its colours.
    assert np.abs(pixels - np.asarray(_plain_pillow(data, LITE0))).mean() > 50


@pytest.mark.parametrize(
    "icc",
    [None, b"not a profile", ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()],
    ids=["none", "garbage", "an RGB profile"],
)
def test_a_cmyk_jpeg_without_a_usable_profile_is_converted_plainly(icc: bytes | None) -> None:
    options = {} if icc is None else {"icc_profile": icc}
    data = encode(COFFEE.convert("CMYK"), quality=95, **options)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    np.testing.assert_array_equal(
        np.asarray(decode(data, LITE0)), np.asarray(_plain_pillow(data, LITE0))
    )


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF", "ICO"])
def test_replicas_decode_only_what_the_gateway_accepts(fmt: str) -> None:
    # A producer on the broker can send any bytes; no other decoder ever sees them.
    with pytest.raises(ImageDecodeError, match=r"not an image in an accepted format \(JPEG"):
        decode(encode(COFFEE.resize((64, 64)), fmt), LITE0)


def test_a_scan_bomb_is_refused_before_it_is_decoded() -> None:
    with pytest.raises(ImageDecodeError, match="500 scans; the limit is 100"):
        decode(scan_bomb(500), LITE0)


def test_a_picture_too_large_to_decode_is_refused_from_its_header(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A few KiB of 16-bit PNG, well within the pixel limit, that would take more memory to
    decode than a replica has: the job fails saying the limit, and nothing is decoded."""
    data = encode(Image.fromarray(np.zeros((4500, 4500), dtype=np.uint16)), "PNG")
    assert len(data) < 200_000

    def decoded(self: PngImagePlugin.PngImageFile) -> None:
        raise AssertionError("the picture was decoded")

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", decoded)
    with pytest.raises(
        ImageDecodeError, match=r"4500x4500, mode I;16\) would take 270 MiB .* the limit is 256 MiB"
    ):
        decode(data, LITE0)
