"""The gallery: images read once at start-up and served from memory by name.

Lookups go through a dict built from the folder listing, so no request path is
ever joined onto a filesystem path: ``../`` and friends simply name nothing.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from gateway.limits import UPLOAD_FORMATS
from shared.errors import UnknownImage

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class GalleryImage:
    name: str
    content_type: str
    width: int
    height: int
    data: bytes
    # Hashed once here, not on every submission (idempotency and result reuse key on it).
    sha256: str


class Gallery:
    def __init__(self, images: dict[str, GalleryImage]) -> None:
        self._images = images

    @classmethod
    def load(cls, folder: Path) -> Gallery:
        images: dict[str, GalleryImage] = {}
        for path in sorted(folder.iterdir()):
            if not path.is_file() or path.name.startswith("."):
                continue
            try:
                # Only the header is read here: a photo whose pixel data is damaged is still
                # offered, and fails visibly as a job rather than vanishing from the page.
                with Image.open(path) as image:
                    kind = UPLOAD_FORMATS.get(image.format or "")
                    size = image.size
            except (UnidentifiedImageError, OSError):
                kind = None
            if kind is None:
                log.info("gallery: skipping %s (not a JPEG, PNG or WebP image)", path.name)
                continue
            data = path.read_bytes()
            images[path.name] = GalleryImage(
                path.name, kind, size[0], size[1], data, hashlib.sha256(data).hexdigest()
            )
        log.info("gallery: %d images from %s", len(images), folder)
        return cls(images)

    def names(self) -> list[str]:
        return list(self._images)

    def __iter__(self) -> Iterator[GalleryImage]:
        return iter(self._images.values())

    def get(self, name: object) -> GalleryImage:
        if not isinstance(name, str) or name not in self._images:
            raise UnknownImage(name, self._images)
        return self._images[name]

    def find(self, name: str) -> GalleryImage | None:
        return self._images.get(name)
