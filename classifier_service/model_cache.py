"""Exported models on disk: one folder per model and weights file, published atomically.

Layout, under ``IMGQ_MODEL_CACHE``::

    <name>/<sha256 of the weights file>/model.onnx   the network, batch axis dynamic
                                       /labels.txt   the 1000 class names, in index order
                                       /model.json   what the folder holds (ExportedModel)
    <name>/.lock                       held while a folder of <name> is being written

A folder is written under a temporary name and renamed into place only once complete, with
``model.json`` written last, so a reader that finds ``model.json`` in a folder with its final
name finds the whole folder.  Writers hold ``<name>/.lock`` (``fcntl.flock``) from the moment
they check whether the folder is needed until it is in place: two replicas starting together
export once, and the second finds the first one's folder.  Neither numpy nor torch is needed
here.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.catalog import ModelSpec

MODEL_FILE = "model.onnx"
LABELS_FILE = "labels.txt"
METADATA_FILE = "model.json"
# Raised when what the exporter writes changes (opset, graph shape, metadata): folders of
# another format are exported again, so no replica serves a model exported the old way.
FORMAT = 1
_LOCK_FILE = ".lock"
# Written by a writer that died before renaming its folder into place; removed by the next
# writer, which holds the lock, so none of them can still be in use.
_TEMP_PREFIX = ".tmp-"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class ExportedModel:
    """One model folder as ``model.json`` describes it."""

    path: Path
    spec: ModelSpec
    weights_sha256: str
    # The weights file's name (not its folder): a replica finds a torchvision model's weights
    # by this name without importing torchvision.
    weights_file: str
    opset: int
    torch_version: str

    @property
    def model_file(self) -> Path:
        return self.path / MODEL_FILE

    def labels(self) -> tuple[str, ...]:
        return tuple((self.path / LABELS_FILE).read_text(encoding="utf-8").splitlines())

    def serves(self, spec: ModelSpec) -> bool:
        """Whether this folder's graph and preprocessing are what ``spec`` asks for (the input
        size is fixed in the graph; the rest must agree with how the replica prepares pixels)."""
        return _geometry(self.spec) == _geometry(spec)

    def metadata(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "name": self.spec.name,
            "title": self.spec.title,
            "weights_sha256": self.weights_sha256,
            "weights_file": self.weights_file,
            "input_size": self.spec.input_size,
            "resize_size": self.spec.resize_size,
            "mean": list(self.spec.mean),
            "std": list(self.spec.std),
            "opset": self.opset,
            "torch_version": self.torch_version,
        }

    @classmethod
    def read(cls, path: Path) -> ExportedModel | None:
        """The folder's description; None when it is absent, of another format or unreadable."""
        try:
            data = json.loads((path / METADATA_FILE).read_text(encoding="utf-8"))
            if data.get("format") != FORMAT:
                return None
            mean, std = data["mean"], data["std"]
            spec = ModelSpec(
                name=str(data["name"]),
                title=str(data["title"]),
                input_size=int(data["input_size"]),
                mean=(float(mean[0]), float(mean[1]), float(mean[2])),
                std=(float(std[0]), float(std[1]), float(std[2])),
                resize=int(data["resize_size"]),
            )
            return cls(
                path=path,
                spec=spec,
                weights_sha256=str(data["weights_sha256"]),
                weights_file=str(data["weights_file"]),
                opset=int(data["opset"]),
                torch_version=str(data["torch_version"]),
            )
        except (OSError, ValueError, KeyError, IndexError, TypeError):
            return None


def _geometry(spec: ModelSpec) -> tuple[object, ...]:
    return (spec.input_size, spec.resize_size, spec.mean, spec.std)


def folder(cache: Path, name: str, weights_sha256: str) -> Path:
    return cache / name / weights_sha256


def find(cache: Path, name: str, weights_sha256: str) -> ExportedModel | None:
    exported = ExportedModel.read(folder(cache, name, weights_sha256))
    if exported is None or exported.spec.name != name:
        return None
    return exported


def exported_versions(cache: Path, name: str) -> list[ExportedModel]:
    """Every complete folder of ``name``, newest first (by when it was put in place)."""
    try:
        entries = [p for p in (cache / name).iterdir() if not p.name.startswith(".")]
    except OSError:
        return []
    found = [e for e in map(ExportedModel.read, entries) if e is not None and e.spec.name == name]
    return sorted(found, key=lambda e: (e.path / METADATA_FILE).stat().st_mtime, reverse=True)


@contextlib.contextmanager
def locked(cache: Path, name: str) -> Iterator[None]:
    """Hold ``<name>/.lock`` exclusively; blocks while another process (or thread) holds it."""
    directory = cache / name
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / _LOCK_FILE, "a") as lock:
        # flock, not fcntl record locks: each open() is its own lock owner, so two threads of
        # one process exclude each other too, and the kernel drops it when its holder dies.
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def publish(
    cache: Path,
    name: str,
    weights_sha256: str,
    write: Callable[[Path], ExportedModel],
    wanted: Callable[[ExportedModel], bool] = lambda _: True,
) -> tuple[ExportedModel, bool]:
    """The folder for these weights, written by ``write`` unless a wanted one is already there.

    ``write(temporary_folder)`` fills the folder (``model.json`` last, via ``write_metadata``)
    and returns its description.  Returns the folder and whether this call wrote it.
    """
    target = folder(cache, name, weights_sha256)
    with locked(cache, name):
        existing = find(cache, name, weights_sha256)
        if existing is not None and wanted(existing):
            return existing, False
        _remove_leftovers(cache / name)
        temporary = Path(tempfile.mkdtemp(prefix=_TEMP_PREFIX, dir=cache / name))
        try:
            written = write(temporary)
            _sync(temporary)
            if target.exists():
                # Of another format or for another input size: set aside, then replace.
                stale = Path(tempfile.mkdtemp(prefix=_TEMP_PREFIX, dir=cache / name))
                target.rename(stale / "old")
            temporary.rename(target)
        except BaseException:
            shutil.rmtree(temporary, ignore_errors=True)
            raise
        _remove_leftovers(cache / name)
        # Readable by the service user where an image exports as root (mkdtemp makes it 0700).
        target.chmod(0o755)
    published = find(cache, name, weights_sha256)
    assert published is not None, f"{target} has no readable {METADATA_FILE}"
    assert published.serves(written.spec)
    return published, True


def write_metadata(exported: ExportedModel) -> None:
    """Write ``model.json``: the last file of a folder, so its presence means complete."""
    path = exported.path / METADATA_FILE
    path.write_text(json.dumps(exported.metadata(), indent=2) + "\n", encoding="utf-8")


def _sync(directory: Path) -> None:
    """On disk before the rename makes them visible: a crash never leaves a named, empty file."""
    for entry in directory.iterdir():
        with open(entry, "rb") as f:
            os.fsync(f.fileno())


def _remove_leftovers(directory: Path) -> None:
    for entry in directory.glob(_TEMP_PREFIX + "*"):
        shutil.rmtree(entry, ignore_errors=True)
