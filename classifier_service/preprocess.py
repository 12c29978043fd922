"""Image bytes to a model input tensor, with the preprocessing the weights expect."""

from __future__ import annotations

import io
import warnings

import torch
from PIL import Image, UnidentifiedImageError
from torchvision.transforms.v2 import functional as TF

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


def to_tensor(image: Image.Image, spec: ModelSpec) -> torch.Tensor:
    """Resize the short side, centre-crop and normalise to a CHW float tensor."""
    image = TF.resize(
        image, [spec.resize_size], interpolation=TF.InterpolationMode.BILINEAR, antialias=True
    )
    image = TF.center_crop(image, [spec.input_size, spec.input_size])
    tensor = TF.to_dtype(TF.pil_to_tensor(image), torch.float32, scale=True)
    normalised: torch.Tensor = TF.normalize(tensor, list(spec.mean), list(spec.std))
    return normalised


def preprocess(data: bytes, spec: ModelSpec) -> torch.Tensor:
    return to_tensor(decode(data, spec), spec)
