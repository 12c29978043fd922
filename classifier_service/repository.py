"""The model repository (``IMGQ_MODEL_DIR``): one folder per model version, found at start-up.

Layout::

    <dir>/<name>/<version>/model.json    what the folder holds (below)
                          /labels.txt    the class names, one a line, in class-index order
                          /<network>     the file model.json names (model.onnx, model.pt, ...)
    <dir>/<name>/default                 optional: the version that ``name`` alone means

``model.json``::

    {"title": "Fruit, v2",                                   (optional; default: the name)
     "network": {"format": "onnx" | "torchscript" | "state_dict",
                 "file": "model.onnx",
                 "architecture": "resnet18"},                (state_dict only: torchvision's)
     "preprocessing": {"input_size": 224, "resize": 256,     (resize optional: input_size + 32)
                       "crop": "center",                     (optional; the only crop)
                       "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                       "interpolation": "bilinear" | "bicubic"},   (optional: bilinear)
     "precision": "fp32" | "bf16"}            (optional: IMGQ_PRECISION; precision.py)

A model's default version is the one its ``default`` file names, else its highest readable
version in natural order (``10`` after ``9``).  A folder that cannot be read is logged with the
reason and skipped: one broken folder never costs the replica the others.  The built-in models
(the catalogue's and the configured torchvision ones) live here too, written by
``prepare_models`` or at a replica's start (``builtin_models.py``), marked ``"builtin": true``.

Reading a folder needs json only: no torch, no onnxruntime (the serving process loads the
network, ``models.py``; the exporter turns a non-ONNX one into ONNX, ``torch_tools/export.py``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from classifier_service.precision import Precision
from shared.catalog import (
    INTERPOLATIONS,
    MODEL_NAME,
    MODEL_VERSION,
    TORCHVISION_NAME,
    ModelSpec,
    model_id,
    version_order,
)
from shared.errors import SettingsError

log = logging.getLogger(__name__)

METADATA_FILE = "model.json"
LABELS_FILE = "labels.txt"
DEFAULT_FILE = "default"
# The version prepare_models gives a built-in model's folder.
BUILTIN_VERSION = "1"
# Fewer classes is no classifier; more, and a label file is more likely something else.
MIN_CLASSES = 2
MAX_CLASSES = 100_000
# Inputs a replica can batch in memory: up to 1024 px square (a batch of 8 is 100 MB).
MAX_INPUT_SIZE = 1024
MIN_INPUT_SIZE = 8


class NetworkFormat(StrEnum):
    ONNX = "onnx"
    TORCHSCRIPT = "torchscript"
    # A torchvision architecture (by name) with this state dict; its head sized to the labels.
    STATE_DICT = "state_dict"


class BrokenModelFolder(SettingsError):
    """A repository folder that cannot be served; the replica skips it (and says why)."""

    code = "model_folder_broken"


@dataclass(frozen=True, slots=True)
class ModelFolder:
    """One readable ``<name>/<version>/`` folder."""

    path: Path
    # spec.name is the model's name; the version is beside it.
    spec: ModelSpec
    version: str
    format: NetworkFormat
    network_file: Path
    # torchvision's name for the architecture (STATE_DICT only).
    architecture: str | None
    labels: tuple[str, ...]
    # Written by prepare_models for a catalogue or torchvision model: served only where
    # IMGQ_MODELS / IMGQ_TORCHVISION_MODELS name it.
    builtin: bool = False
    # The precision model.json asks for; None: the replica's setting (IMGQ_PRECISION).
    precision: Precision | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def id(self) -> str:
        return model_id(self.name, self.version)


@dataclass(frozen=True, slots=True)
class Scan:
    """What a repository holds: its readable folders (by name, then version order), the
    version each ``default`` file names (None where it names no readable version), and the
    folders skipped (path, reason)."""

    folders: tuple[ModelFolder, ...]
    named: Mapping[str, str | None]
    broken: tuple[tuple[Path, str], ...]

    def find(self, name: str) -> list[ModelFolder]:
        return [f for f in self.folders if f.name == name]

    @property
    def defaults(self) -> dict[str, str]:
        return self.defaults_without(())

    def defaults_without(self, failed: Collection[str]) -> dict[str, str]:
        """Each name's default version once the ``failed`` ids (folders readable but not
        loadable: every replica fails them alike) are left out: the named one, else the
        highest.  A name whose ``default`` file names a version not served has none."""
        defaults: dict[str, str] = {}
        for name in dict.fromkeys(f.name for f in self.folders):
            versions = [f.version for f in self.find(name) if f.id not in failed]
            if name in self.named:
                named = self.named[name]
                if named is not None and named in versions:
                    defaults[name] = named
            elif versions:
                defaults[name] = versions[-1]
        return defaults


def scan(directory: Path) -> Scan:
    """Every model folder under ``directory``; each broken one logged and left out."""
    folders: list[ModelFolder] = []
    named: dict[str, str | None] = {}
    broken: list[tuple[Path, str]] = []

    def skip(path: Path, reason: str) -> None:
        log.warning("model folder %s skipped: %s", path, reason)
        broken.append((path, reason))

    try:
        names = sorted(p for p in directory.iterdir() if not p.name.startswith("."))
    except FileNotFoundError:
        log.info("model repository %s does not exist (yet): no models in it", directory)
        return Scan((), {}, ())
    for name_dir in names:
        if not name_dir.is_dir():
            continue
        if not MODEL_NAME.fullmatch(name_dir.name):
            skip(name_dir, f"{name_dir.name!r} is not a model name ({MODEL_NAME.pattern})")
            continue
        found: list[ModelFolder] = []
        versions = [p for p in name_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]
        for path in sorted(versions, key=lambda p: version_order(p.name)):
            try:
                found.append(read_folder(path))
            except BrokenModelFolder as exc:
                skip(path, str(exc))
        folders += found
        if (name_dir / DEFAULT_FILE).is_file():
            named[name_dir.name] = _named_default(name_dir, found)
    return Scan(tuple(folders), named, tuple(broken))


def _named_default(name_dir: Path, found: list[ModelFolder]) -> str | None:
    readable = [f.version for f in found]
    named = name_dir / DEFAULT_FILE
    try:
        version = named.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        log.warning(
            "model %s has no default version: %s is unreadable: %s", name_dir.name, named, exc
        )
        return None
    if version not in readable:
        # Not the highest instead: every replica must mean the same version by `name`.
        log.warning(
            "model %s has no default version: %s names %r, which is not a readable version "
            "(readable: %s); only %s@<version> is served",
            name_dir.name,
            named,
            version,
            ", ".join(readable) or "none",
            name_dir.name,
        )
        return None
    return version


def read_folder(path: Path) -> ModelFolder:
    """The folder ``<name>/<version>/`` at ``path``; BrokenModelFolder says what is wrong."""
    name, version = path.parent.name, path.name
    if not MODEL_NAME.fullmatch(name):
        raise BrokenModelFolder(f"{name!r} is not a model name ({MODEL_NAME.pattern})")
    if not MODEL_VERSION.fullmatch(version):
        raise BrokenModelFolder(f"{version!r} is not a version ({MODEL_VERSION.pattern})")
    try:
        data = json.loads((path / METADATA_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BrokenModelFolder(f"no {METADATA_FILE}") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise BrokenModelFolder(f"{METADATA_FILE} is not readable JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BrokenModelFolder(f"{METADATA_FILE} must hold an object")
    network = _section(data, "network")
    preprocessing = _section(data, "preprocessing")
    try:
        network_format = NetworkFormat(str(network.get("format")))
    except ValueError:
        allowed = ", ".join(f.value for f in NetworkFormat)
        raise BrokenModelFolder(
            f"network.format must be one of {allowed}, got {network.get('format')!r}"
        ) from None
    file_name = network.get("file")
    if (
        not isinstance(file_name, str)
        or Path(file_name).name != file_name
        or file_name in ("", ".")
    ):
        raise BrokenModelFolder(f"network.file must name a file in the folder, got {file_name!r}")
    network_file = path / file_name
    if not network_file.is_file():
        raise BrokenModelFolder(f"network file {file_name} is missing")
    architecture = network.get("architecture")
    if network_format is NetworkFormat.STATE_DICT:
        if not isinstance(architecture, str) or not TORCHVISION_NAME.fullmatch(architecture):
            raise BrokenModelFolder(
                f"a state_dict network needs network.architecture, a torchvision model name "
                f"(e.g. resnet18), got {architecture!r}"
            )
    elif architecture is not None:
        raise BrokenModelFolder("network.architecture is for state_dict networks only")
    title = data.get("title", name)
    if not isinstance(title, str) or not title.strip():
        raise BrokenModelFolder(f"title must be a non-empty string, got {title!r}")
    builtin = data.get("builtin", False)
    if not isinstance(builtin, bool):
        raise BrokenModelFolder(f"builtin must be true or false, got {builtin!r}")
    precision = data.get("precision")
    if precision is not None and precision not in tuple(Precision):
        allowed = ", ".join(p.value for p in Precision)
        raise BrokenModelFolder(f"precision must be one of {allowed}, got {precision!r}")
    return ModelFolder(
        path=path,
        spec=_spec(name, title, preprocessing),
        version=version,
        format=network_format,
        network_file=network_file,
        architecture=architecture if isinstance(architecture, str) else None,
        labels=read_labels(path / LABELS_FILE),
        builtin=builtin,
        precision=None if precision is None else Precision(precision),
    )


def _section(data: dict[str, Any], key: str) -> dict[str, Any]:
    section = data.get(key)
    if not isinstance(section, dict):
        raise BrokenModelFolder(f"{METADATA_FILE} needs a {key!r} object")
    return section


def _size(preprocessing: dict[str, Any], key: str, minimum: int) -> int:
    value = preprocessing.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BrokenModelFolder(f"preprocessing.{key} must be an integer, got {value!r}")
    if not minimum <= value <= MAX_INPUT_SIZE * 2:
        raise BrokenModelFolder(
            f"preprocessing.{key} must be between {minimum} and {MAX_INPUT_SIZE * 2}, got {value}"
        )
    return value


def _triple(preprocessing: dict[str, Any], key: str) -> tuple[float, float, float]:
    value = preprocessing.get(key)
    if (
        not isinstance(value, list)
        or len(value) != 3
        or not all(isinstance(x, int | float) and not isinstance(x, bool) for x in value)
    ):
        raise BrokenModelFolder(
            f"preprocessing.{key} must be 3 numbers (one per RGB channel), got {value!r}"
        )
    return float(value[0]), float(value[1]), float(value[2])


def _spec(name: str, title: str, preprocessing: dict[str, Any]) -> ModelSpec:
    input_size = _size(preprocessing, "input_size", MIN_INPUT_SIZE)
    if input_size > MAX_INPUT_SIZE:
        raise BrokenModelFolder(
            f"preprocessing.input_size must be at most {MAX_INPUT_SIZE}, got {input_size}"
        )
    resize = _size(preprocessing, "resize", input_size) if "resize" in preprocessing else None
    crop = preprocessing.get("crop", "center")
    if crop != "center":
        raise BrokenModelFolder(f"preprocessing.crop must be 'center' (the only one), got {crop!r}")
    interpolation = preprocessing.get("interpolation", "bilinear")
    if interpolation not in INTERPOLATIONS:
        raise BrokenModelFolder(
            f"preprocessing.interpolation must be one of {', '.join(INTERPOLATIONS)}, "
            f"got {interpolation!r}"
        )
    mean, std = _triple(preprocessing, "mean"), _triple(preprocessing, "std")
    if not all(s > 0 for s in std):
        raise BrokenModelFolder(f"preprocessing.std must be positive, got {list(std)}")
    return ModelSpec(
        name=name,
        title=title,
        input_size=input_size,
        mean=mean,
        std=std,
        resize=resize,
        interpolation=str(interpolation),
    )


def read_labels(path: Path) -> tuple[str, ...]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BrokenModelFolder(f"no {LABELS_FILE}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BrokenModelFolder(f"{LABELS_FILE} is not readable UTF-8 text: {exc}") from None
    labels = tuple(line.strip() for line in text.splitlines())
    # One trailing blank line is how most editors end a file; any other blank is a mistake.
    if labels and not labels[-1]:
        labels = labels[:-1]
    if "" in labels:
        raise BrokenModelFolder(f"{LABELS_FILE} has a blank line {labels.index('') + 1}")
    if not MIN_CLASSES <= len(labels) <= MAX_CLASSES:
        raise BrokenModelFolder(
            f"{LABELS_FILE} has {len(labels)} labels; a classifier needs "
            f"{MIN_CLASSES} to {MAX_CLASSES}"
        )
    return labels


def metadata(
    spec: ModelSpec, network_format: NetworkFormat, file_name: str, *, builtin: bool = False
) -> dict[str, Any]:
    """``model.json`` for a folder (prepare_models writes the built-ins' with it)."""
    data: dict[str, Any] = {
        "title": spec.title,
        "network": {"format": network_format.value, "file": file_name},
        "preprocessing": {
            "input_size": spec.input_size,
            "resize": spec.resize_size,
            "crop": "center",
            "mean": list(spec.mean),
            "std": list(spec.std),
            "interpolation": spec.interpolation,
        },
    }
    if builtin:
        data["builtin"] = True
    return data


@dataclass(frozen=True, slots=True)
class Selection:
    """The folders a replica serves, from the repository scanned."""

    folders: tuple[ModelFolder, ...]
    found: Scan

    def defaults(self, loaded: Collection[str]) -> dict[str, str]:
        """The default version of each name whose default is among the ``loaded`` ids."""
        failed = {f.id for f in self.folders} - set(loaded)
        return {
            name: version
            for name, version in self.found.defaults_without(failed).items()
            if model_id(name, version) in loaded
        }


def select(found: Scan, builtin_names: Iterable[str], serve: Iterable[str]) -> Selection:
    """The folders to serve: the configured built-ins (in that order) then every other model
    (in name order), narrowed to ``serve`` (``name`` or ``name@version``) when it is not empty.

    A built-in's folder that is not configured (IMGQ_MODELS narrowed since it was written) is
    not served: IMGQ_MODELS keeps its meaning.
    """
    builtin_names = tuple(builtin_names)
    serve = tuple(serve)
    chosen = [f for name in builtin_names for f in found.find(name)]
    chosen += [f for f in found.folders if f.name not in builtin_names and not f.builtin]
    if serve:
        chosen = [f for f in chosen if f.name in serve or f.id in serve]
        known = {f.name for f in chosen} | {f.id for f in chosen}
        for entry in serve:
            if entry not in known:
                log.warning("IMGQ_SERVE names %s, which is not in the repository", entry)
    return Selection(tuple(chosen), found)
