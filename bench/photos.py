"""A folder of photos, and the ground truth of labelled ImageNet photos.

A folder needs a ``labels.csv`` with at least the columns ``file`` and ``class_index`` (the
class's position in the standard 1000-class order, which is also the order of the sorted
WordNet IDs).  The photos alone are not enough: nothing installed here lists the 1000 WordNet
IDs (torchvision ships only the class names, some of them ambiguous, e.g. two "crane"s),
so a ``<wnid>_<name>.JPEG`` file name cannot be turned into a class index offline.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Sequence
from pathlib import Path

LABELS_FILE = "labels.csv"
NUM_CLASSES = 1000
# What the gateway's gallery serves (it checks the contents; this only picks the files).
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".webp")


class LabelsError(Exception):
    """The folder has no usable labels.csv."""


def image_files(folder: Path) -> list[Path]:
    """The photos in a folder, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def read_labels(folder: Path) -> dict[str, int]:
    """File name -> ImageNet class index, for every row whose photo is in the folder."""
    path = folder / LABELS_FILE
    if not path.is_file():
        raise LabelsError(
            f"{path} not found: the accuracy check needs a labels.csv with the columns "
            "file,class_index beside the photos"
        )
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"file", "class_index"} - set(reader.fieldnames or ())
        if missing:
            raise LabelsError(f"{path} lacks the column(s) {', '.join(sorted(missing))}")
        labels: dict[str, int] = {}
        for line, row in enumerate(reader, start=2):
            name = (row["file"] or "").strip()
            try:
                index = int(row["class_index"])
            except (TypeError, ValueError):
                raise LabelsError(f"{path}:{line}: class_index {row['class_index']!r}") from None
            if not 0 <= index < NUM_CLASSES:
                raise LabelsError(f"{path}:{line}: class_index {index} is not in 0..999")
            if "/" in name or name.startswith(".") or not name:
                raise LabelsError(f"{path}:{line}: file {name!r} is not a plain file name")
            if (folder / name).is_file():
                labels[name] = index
    if not labels:
        raise LabelsError(f"{path} names no photo that is in {folder}")
    return labels


def write_variants(
    sources: Sequence[Path], count: int, folder: Path, *, max_side: int | None = None
) -> list[Path]:
    """``count`` distinct JPEG files in ``folder``, made from the photos: each photo in turn,
    re-encoded at one quality after another (95, 94, ...), so that no two share their bytes
    and none is answered from an earlier result.  ``max_side`` scales them down first."""
    from PIL import Image  # the bench and the tests have Pillow; the rest of this module not

    if not sources:
        raise ValueError("no photos to make variants of")
    folder.mkdir(parents=True, exist_ok=True)
    decoded = []
    for source in sources:
        with Image.open(source) as image:
            rgb = image.convert("RGB")
        if max_side is not None:
            rgb.thumbnail((max_side, max_side))
        decoded.append((source.stem, rgb))
    written: list[Path] = []
    seen: set[bytes] = set()
    for i in range(count):
        stem, rgb = decoded[i % len(decoded)]
        quality = 95 - i // len(decoded)
        while True:
            out = io.BytesIO()
            rgb.save(out, "JPEG", quality=max(quality, 5))
            data = out.getvalue()
            digest = hashlib.sha256(data).digest()
            if digest not in seen or quality <= 5:
                break
            quality -= 1  # the same bytes as another variant: one step further
        seen.add(digest)
        path = folder / f"{stem}-{i:05}.jpg"
        path.write_bytes(data)
        written.append(path)
    return written
