"""What ``imgq classify`` is given, as the images to classify.

An argument is, in this order: ``-`` (read more arguments from stdin, one a line); a
directory (its image files, recursively, in name order, hidden ones left out); an existing
file (uploaded, whatever its name); a glob pattern (the image files it matches); anything
else names a gallery image on the server.  With ``--gallery`` every argument is a gallery
name.  An image named twice is classified once.
"""

from __future__ import annotations

import glob
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from imgq import ImageInput

# What the gateway classifies (JPEG, a phone's MPO, PNG, WebP), by the name's suffix: a
# directory or a pattern may hold other files, which are left out rather than refused.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".mpo", ".png", ".webp"})
_GLOB = frozenset("*?[")


class InputError(Exception):
    """An argument that names nothing to classify (a pattern matching no image file)."""


@dataclass(frozen=True, slots=True)
class Target:
    # How the image is shown and recorded (--out's "image"): the path as found, or the name.
    name: str
    # A Path for a local file, a str for a gallery image.
    image: ImageInput

    @property
    def is_file(self) -> bool:
        return isinstance(self.image, Path)


def expand(arguments: Sequence[str], *, gallery: bool, stdin: TextIO) -> list[Target]:
    seen: set[str] = set()
    targets: list[Target] = []
    for target in _targets(arguments, gallery, stdin):
        if target.name not in seen:
            seen.add(target.name)
            targets.append(target)
    return targets


def _targets(arguments: Iterable[str], gallery: bool, stdin: TextIO) -> Iterator[Target]:
    for argument in arguments:
        if argument == "-":
            listed = (line.strip() for line in stdin)
            yield from _targets([a for a in listed if a and a != "-"], gallery, stdin)
        elif gallery:
            yield Target(argument, argument)
        else:
            yield from _one(argument)


def _one(argument: str) -> Iterator[Target]:
    path = Path(argument)
    if path.is_dir():
        yield from _directory(path)
    elif path.is_file():
        yield Target(argument, path)
    elif _GLOB & set(argument):
        matches = sorted(glob.glob(argument, recursive=True))
        found = False
        for match in matches:
            matched = Path(match)
            if matched.is_dir():
                for target in _directory(matched):
                    found = True
                    yield target
            elif matched.is_file() and _is_image(matched):
                found = True
                yield Target(match, matched)
        if not found:
            raise InputError(f"{argument}: matches no image file")
    else:
        yield Target(argument, argument)


def _directory(root: Path) -> Iterator[Target]:
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).parts
        if any(part.startswith(".") for part in relative):
            continue
        if path.is_file() and _is_image(path):
            yield Target(str(path), path)


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES
