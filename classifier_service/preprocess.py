"""Image bytes to a model input array, with the preprocessing the weights expect.

numpy and Pillow only: the serving process never imports torch (a replica under ONNX Runtime
holds three models in a fraction of torch's memory).  The numbers are exactly those of the
torch code this replaced (float32 throughout, the same two operations in the same order);
``tests/test_preprocess.py`` checks them against torch bit for bit.
"""

from __future__ import annotations

import functools
import io
import warnings

import numpy as np
import numpy.typing as npt
from PIL import Image, UnidentifiedImageError

from shared.catalog import ModelSpec
from shared.errors import ImageDecodeError

# Pillow warns above ~89 Mpx and raises above twice that; treat the warning as
# an error too, since a picture that large is far more likely a decompression
# bomb than a photo worth classifying at 224 px.
MAX_PIXELS = 64_000_000

# One image (C, H, W) or a batch (N, C, H, W) of normalised float32 pixels.
Pixels = npt.NDArray[np.float32]


def decode(data: bytes, spec: ModelSpec) -> Image.Image:
    """Decode to RGB, letting JPEG decode at a reduced scale when the image is much larger."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.width * image.height > MAX_PIXELS:
                raise ImageDecodeError(
                    f"image has {image.width}x{image.height} pixels; the limit is {MAX_PIXELS:,}"
                )
            # draft() picks the largest DCT scale (1/2, 1/4, 1/8) that still leaves
            # both sides at least this big, so the resize below loses nothing.
            image.draft("RGB", (spec.resize_size, spec.resize_size))
            if image.mode == "RGB":
                # Decoding here keeps every decode error inside this try; convert() would
                # decode too, then copy the whole picture for nothing.
                image.load()
                return image
            return image.convert("RGB")
    except ImageDecodeError:
        raise
    except (
        UnidentifiedImageError,
        OSError,
        ValueError,
        SyntaxError,
        Image.DecompressionBombWarning,
        Image.DecompressionBombError,
    ) as exc:
        raise ImageDecodeError(f"cannot decode image: {exc}") from None


def crop_box(width: int, height: int, spec: ModelSpec) -> tuple[float, float, float, float]:
    """The source region that becomes the centre crop once the short side is resized.

    Same geometry as torchvision's ``resize`` (short side to ``resize_size``, long side
    truncated) then ``center_crop`` (offsets rounded), in source pixel coordinates.
    """
    short, long = (width, height) if width <= height else (height, width)
    resized_long = int(spec.resize_size * long / short)
    new_w, new_h = (
        (spec.resize_size, resized_long) if width <= height else (resized_long, spec.resize_size)
    )
    crop = spec.input_size
    left = round((new_w - crop) / 2.0)
    top = round((new_h - crop) / 2.0)
    scale_x, scale_y = width / new_w, height / new_h
    return (left * scale_x, top * scale_y, (left + crop) * scale_x, (top + crop) * scale_y)


@functools.cache
def normaliser(spec: ModelSpec) -> Normaliser:
    return Normaliser(spec)


class Normaliser:
    """``(x / 255 - mean) / std`` per channel, as one multiply and one subtract in float32.

    The constants are computed exactly as the torch code computed them (float32 tensors:
    ``1 / (255 * std)`` and ``mean / std``), so every pixel gets the same float as before.
    """

    def __init__(self, spec: ModelSpec) -> None:
        std = np.asarray(spec.std, dtype=np.float32)
        mean = np.asarray(spec.mean, dtype=np.float32)
        self.scale = (np.float32(1) / (np.float32(255) * std)).reshape(3, 1, 1)
        self.offset = (mean / std).reshape(3, 1, 1)

    def __call__(self, image: Image.Image, out: Pixels) -> None:
        """Write the (3, H, W) normalised planes of an RGB image of that size into ``out``."""
        pixels = np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)
        # uint8 * float32 computes in float32, as the torch code's .to(float32).mul_() did.
        np.multiply(pixels, self.scale, out=out)
        np.subtract(out, self.offset, out=out)


def crop_resized(image: Image.Image, spec: ModelSpec) -> Image.Image:
    """The centre crop of the short-side resize, at ``input_size`` square.

    Pillow resizes only the region that survives the crop (``box=``), which is a third of
    the work of resizing the whole picture and then cropping it; the result differs from
    that by at most one grey level on a few pixels, and gives the same top-5 on the sample.
    """
    size = spec.input_size
    return image.resize(
        (size, size), Image.Resampling.BILINEAR, box=crop_box(image.width, image.height, spec)
    )


def to_array(image: Image.Image, spec: ModelSpec, out: Pixels | None = None) -> Pixels:
    """Resize, centre-crop and normalise to a (3, H, W) float32 array (into ``out`` if given)."""
    size = spec.input_size
    if out is None:
        out = np.empty((3, size, size), dtype=np.float32)
    normaliser(spec)(crop_resized(image, spec), out)
    return out


def preprocess(data: bytes, spec: ModelSpec, out: Pixels | None = None) -> Pixels:
    """Image bytes to the model's (3, H, W) input; raises ImageDecodeError for bad bytes."""
    return to_array(decode(data, spec), spec, out)
