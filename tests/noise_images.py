"""Little photos of noise, made on the spot: each distinct, so no job is answered from an
earlier result."""

from __future__ import annotations

import io
import random

from PIL import Image


def small_jpegs(count: int, seed: int) -> list[bytes]:
    """Distinct little photos (noise), so no job is answered from an earlier result."""
    rng = random.Random(seed)
    images = []
    for _ in range(count):
        image = Image.new("RGB", (48, 40), tuple(rng.randrange(256) for _ in range(3)))
        image.putpixel((rng.randrange(48), rng.randrange(40)), (1, 2, 3))
        out = io.BytesIO()
        image.save(out, "JPEG", quality=90)
        images.append(out.getvalue())
    return images
