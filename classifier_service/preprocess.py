"""Image bytes to a model input tensor, with the preprocessing the weights expect."""

from __future__ import annotations

import io
import warnings

import torch
from PIL import Image, UnidentifiedImageError

from shared.catalog import ModelSpec
from shared.errors import ImageDecodeError

# Pillow warns above ~89 Mpx and raises above twice that; treat the warning as
# an error too, since a picture that large is far more likely a decompression
# bomb than a photo worth classifying at 224 px.
MAX_PIXELS = 64_000_000


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


def to_tensor(image: Image.Image, spec: ModelSpec) -> torch.Tensor:
    """Resize the short side, centre-crop and normalise to a CHW float tensor.

    Pillow resizes only the region that survives the crop (``box=``), which is a third of
    the work of resizing the whole picture and then cropping it; the result differs from
    that by at most one grey level on a few pixels, and gives the same top-5 on the sample.
    """
    size = spec.input_size
    crop = image.resize(
        (size, size), Image.Resampling.BILINEAR, box=crop_box(image.width, image.height, spec)
    )
    pixels = torch.frombuffer(bytearray(crop.tobytes()), dtype=torch.uint8)
    tensor = pixels.view(size, size, 3).permute(2, 0, 1).to(torch.float32)
    # (x / 255 - mean) / std, as one multiply and one subtract.
    std = torch.tensor(spec.std).view(3, 1, 1)
    mean = torch.tensor(spec.mean).view(3, 1, 1)
    normalised: torch.Tensor = tensor.mul_(1 / (255 * std)).sub_(mean / std)
    return normalised


def preprocess(data: bytes, spec: ModelSpec) -> torch.Tensor:
    return to_tensor(decode(data, spec), spec)
