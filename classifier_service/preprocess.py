"""Image bytes to a model input array, with the preprocessing the weights expect.

numpy and Pillow only: the serving process never imports torch (a replica under ONNX Runtime
holds three models in a fraction of torch's memory).  The numbers are exactly those of the
reference pipeline in torch (float32 throughout, the same two operations in the same order);
``tests/unit/test_preprocess.py`` checks them against it bit for bit.

The pixels are the picture as a viewer shows it: turned upright by its EXIF orientation, an
MPO's first frame, 16-bit greyscale scaled to 8 bits, CMYK through its embedded ICC profile.
An ordinary RGB JPEG is decoded as it is.
"""

from __future__ import annotations

import functools
import io
import struct
import warnings

import numpy as np
import numpy.typing as npt
from PIL import ExifTags, Image, ImageCms, ImageOps, UnidentifiedImageError

from shared.catalog import ModelSpec
from shared.errors import ImageDecodeError
from shared.images import DECODERS, FORMAT_NAMES, JPEG_FORMATS, decoded_refusal, jpeg_refusal

# Pillow warns above ~89 Mpx and raises above twice that; treat the warning as
# an error too, since a picture that large is far more likely a decompression
# bomb than a photo worth classifying at 224 px.
MAX_PIXELS = 64_000_000

_ACCEPTED = ", ".join(FORMAT_NAMES.values())
# EXIF orientations that turn or flip the stored pixels (1 is "as stored").
_TURNED = range(2, 9)
# Greyscale modes that hold 16-bit levels: I;16 in each byte order, and "I" (32-bit), which
# Pillow has also read 16-bit PNGs into.
_SIXTEEN_BIT_GREY = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})

# One image (C, H, W) or a batch (N, C, H, W) of normalised float32 pixels.
Pixels = npt.NDArray[np.float32]


def decode(data: bytes, spec: ModelSpec) -> Image.Image:
    """Decode to upright RGB, letting JPEG decode at a reduced scale when the image is much larger.

    Only the gateway's decoders ever see the bytes (``shared/images.py``): a job can come from
    any AMQP producer, not only from the gateway that checked it.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=DECODERS)
            if image.width * image.height > MAX_PIXELS:
                raise ImageDecodeError(
                    f"image has {image.width}x{image.height} pixels; the limit is {MAX_PIXELS:,}"
                )
            # From the header alone, before any pixel is decoded: a few KiB of 16-bit PNG
            # within the pixel limit would still take about a gigabyte to decode.
            if refusal := decoded_refusal(image.width, image.height, image.mode, image.format):
                raise ImageDecodeError(f"refused to decode: {refusal}")
            if image.format in JPEG_FORMATS and (refusal := jpeg_refusal(data)):
                raise ImageDecodeError(f"refused to decode: {refusal}")
            # draft() picks the largest DCT scale (1/2, 1/4, 1/8) that still leaves
            # both sides at least this big, so the resize below loses nothing.  Turning the
            # image upright afterwards keeps that true (both sides were scaled alike), and
            # crop_box() is computed on the upright size.  An MPO decodes its first frame.
            image.draft("RGB", (spec.resize_size, spec.resize_size))
            # Decoding here keeps every decode error inside this try; convert() would decode
            # too, then copy the whole picture for nothing when it is RGB already.
            image.load()
            return _rgb(_upright(image))
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError(
            f"cannot decode image: not an image in an accepted format ({_ACCEPTED})"
        ) from None
    except (
        OSError,
        ValueError,
        SyntaxError,
        EOFError,
        struct.error,
        MemoryError,
        Image.DecompressionBombWarning,
        Image.DecompressionBombError,
    ) as exc:
        raise ImageDecodeError(f"cannot decode image: {exc}") from None


def _upright(image: Image.Image) -> Image.Image:
    """The image as a viewer (and the gateway's page) shows it: turned by its EXIF Orientation.

    A phone stores a portrait photo sideways with a tag that says so; classifying the stored
    pixels took top-1 on the ImageNet sample from 0.89 to 0.58.
    """
    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation)
    except Exception:  # metadata a viewer would ignore must not fail the photo
        return image
    if orientation not in _TURNED:
        return image  # exif_transpose() would copy the whole picture to change nothing
    return ImageOps.exif_transpose(image)


def _rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in _SIXTEEN_BIT_GREY:
        # convert() clips 16-bit levels to 255 (a 16-bit PNG comes out nearly white): scale
        # them, rounding, so 65535 is 255 and 257 * n is n.
        levels = np.clip(np.asarray(image), 0, 65535).astype(np.uint32)
        return Image.fromarray(((levels + 128) // 257).astype(np.uint8)).convert("RGB")
    if image.mode == "CMYK":
        return _cmyk_to_srgb(image)
    # Palette, greyscale, alpha (dropped): Pillow converts them exactly.
    return image.convert("RGB")


def _cmyk_to_srgb(image: Image.Image) -> Image.Image:
    """A CMYK JPEG through its embedded ICC profile, as a colour-managed viewer shows it;
    without one (or with one that is not a usable CMYK profile) Pillow's plain formula."""
    icc = image.info.get("icc_profile")
    if icc:
        try:
            transform = _cmyk_transform(icc)
        except (OSError, ImageCms.PyCMSError):  # not a profile; not a CMYK one
            pass  # browsers too ignore a profile they cannot use
        else:
            converted = ImageCms.applyTransform(image, transform)
            assert converted is not None  # None only when transforming in place
            return converted
    return image.convert("RGB")


@functools.lru_cache(maxsize=8)
def _cmyk_transform(icc: bytes) -> ImageCms.ImageCmsTransform:
    # Building a transform parses the profile and plans the conversion (milliseconds); a
    # print shop's photos tend to carry the same profile, so keep the last few.
    # Relative colorimetric: the profile's colours as it states them (what a browser shows);
    # perceptual would let Little CMS rescale them by the profile's black point.
    source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
    return ImageCms.buildTransform(
        source, _srgb(), "CMYK", "RGB", ImageCms.Intent.RELATIVE_COLORIMETRIC
    )


@functools.cache
def _srgb() -> ImageCms.ImageCmsProfile:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


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

    The constants are computed exactly as the torch reference computes them (float32 tensors:
    ``1 / (255 * std)`` and ``mean / std``), so every pixel gets the same float.
    """

    def __init__(self, spec: ModelSpec) -> None:
        std = np.asarray(spec.std, dtype=np.float32)
        mean = np.asarray(spec.mean, dtype=np.float32)
        self.scale = (np.float32(1) / (np.float32(255) * std)).reshape(3, 1, 1)
        self.offset = (mean / std).reshape(3, 1, 1)

    def __call__(self, image: Image.Image, out: Pixels) -> None:
        """Write the (3, H, W) normalised planes of an RGB image of that size into ``out``."""
        pixels = np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)
        # uint8 * float32 computes in float32, as the torch reference's .to(float32).mul_().
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
        (size, size), _RESAMPLING[spec.interpolation], box=crop_box(image.width, image.height, spec)
    )


# ModelSpec.interpolation (shared/catalog.py INTERPOLATIONS) to Pillow's filter.
_RESAMPLING = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}


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
