"""The models imgq can offer, and how each one's input must be prepared.

Metadata only (no torch), so the gateway can describe and validate models
without loading them.  The preprocessing is the one the weights were trained
with: EfficientNet-Lite was trained on inputs scaled to [-1, 1] (mean = std =
0.5 per channel), evaluated on a centre crop of ``input_size`` taken from the
image resized so that its short side is ``input_size + 32`` (TensorFlow's
``CROP_PADDING``).  On the 100-photo ImageNet sample the benchmark measures
(docs/benchmarks.md), antialiased bilinear resizing gives Lite0 0.89 top-1 / 0.99 top-5
(bicubic: 0.89 / 0.97, and slower); the torchvision mean/std would cost about 11 points of
top-1.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from shared.errors import SettingsError
from shared.settings import CLASSIFIER, GATEWAY, SETUP, Environ, env_list, variable

_CROP_PADDING = 32

# A model's name and version in a model repository (classifier_service/repository.py), and so
# on the wire: a request names ``name`` (its default version) or ``name@version``.  Folder
# names too, hence no slash, no leading dot, and a name in lower case (one folder per model
# whatever the file system's case rules).
MODEL_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]*")
MODEL_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
VERSION_SEPARATOR = "@"
# torchvision's model names (resnet50, mobilenet_v3_small, ...): IMGQ_TORCHVISION_MODELS and a
# repository state dict's architecture.  Whether a name is one of torchvision's classifiers is
# checked where torchvision is imported (the exporter, the torch runtime): a replica on ONNX
# Runtime never imports torch, not even to check a name.
TORCHVISION_NAME = re.compile(r"[a-z][a-z0-9_]*")
# Interpolations the repository may ask for, by Pillow's names in lower case.
INTERPOLATIONS = ("bilinear", "bicubic")


def split_model_id(model_id: str) -> tuple[str, str | None] | None:
    """``name`` -> (name, None); ``name@version`` -> (name, version); None when malformed."""
    name, separator, version = model_id.partition(VERSION_SEPARATOR)
    if not MODEL_NAME.fullmatch(name):
        return None
    if not separator:
        return name, None
    return (name, version) if MODEL_VERSION.fullmatch(version) else None


def model_id(name: str, version: str) -> str:
    return f"{name}{VERSION_SEPARATOR}{version}"


_DIGITS = re.compile(r"(\d+)")


def version_order(version: str) -> tuple[tuple[int, int, str], ...]:
    """Natural order of versions: runs of digits compare as numbers (``10`` after ``9``,
    ``1.10`` after ``1.9``).  The repository's default and the gateways' agree on it."""
    return tuple(
        (0, int(part), "") if part.isdigit() else (1, 0, part)
        for part in _DIGITS.split(version)
        if part
    )


@dataclass(frozen=True, slots=True)
class ModelSpec:
    name: str
    title: str
    input_size: int
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    # Short side before the centre crop, when the weights say so (torchvision's weights carry
    # their own, e.g. 256 for a 224 crop); None keeps TensorFlow's input + 32.
    resize: int | None = None
    # How the crop is resized to ``input_size`` (INTERPOLATIONS); the crop is always central.
    interpolation: str = "bilinear"

    @property
    def resize_size(self) -> int:
        return self.resize if self.resize is not None else self.input_size + _CROP_PADDING


CATALOG: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("efficientnet_lite0", "EfficientNet-Lite0", 224),
        ModelSpec("efficientnet_lite1", "EfficientNet-Lite1", 240),
        ModelSpec("efficientnet_lite2", "EfficientNet-Lite2", 260),
    )
}

DEFAULT_MODEL = "efficientnet_lite0"

_MODELS = variable(
    "IMGQ_MODELS",
    tuple(CATALOG),
    (GATEWAY, CLASSIFIER, SETUP),
    "catalogue models, comma-separated: those the gateway offers and a replica loads "
    "(the setup step declares their queues)",
)


def catalog_models(env: Environ) -> tuple[str, ...]:
    """IMGQ_MODELS, checked against the catalogue: both services read it the same way."""
    models = env_list(env, _MODELS.name, _MODELS.default)
    unknown = [m for m in models if m not in CATALOG]
    if unknown:
        raise SettingsError(
            f"IMGQ_MODELS names unknown models {unknown}; known: {', '.join(CATALOG)}"
        )
    return models
