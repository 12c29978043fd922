"""What the upload tests send: the coffee from the gallery in other formats, as a phone writes
it, and small files that would decode to far too much."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image

from tests import api
from tests.odd_images import mpo

COFFEE = (api.REPO / "images" / "coffee.jpg").read_bytes()


def encode(fmt: str, image: Image.Image | None = None, **options: Any) -> bytes:
    """``image`` (by default the coffee) saved as ``fmt``."""
    out = io.BytesIO()
    (image or Image.open(io.BytesIO(COFFEE)).convert("RGB")).save(out, fmt, **options)
    return out.getvalue()


def phone_jpeg() -> bytes:
    """The coffee as a phone writes it: a JPEG with an MPF block and a second frame (MPO)."""
    coffee = Image.open(io.BytesIO(COFFEE)).convert("RGB")
    return mpo(coffee, coffee.resize((300, 200)))


def huge_png() -> bytes:
    """9000 x 9000 (81 megapixels) of one colour: a few KiB that would decode to 81 MB."""
    return encode("PNG", Image.new("1", (9000, 9000)), optimize=True)


def deep_png() -> bytes:
    """4500 x 4500 of 16-bit grey: 20 megapixels (half the limit) in a few KiB, that would take
    270 MiB to decode and make RGB."""
    return encode("PNG", Image.fromarray(np.zeros((4500, 4500), dtype=np.uint16)))
