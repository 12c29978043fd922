"""A torchvision classifier's weights file, written by the tests themselves.

The suite cannot download anything: ``write_weights`` saves a model with seeded random weights
under the name torchvision's downloader would give the real one.  ``SMALL`` is the model the
tests give a file, ``MISSING`` one they configure without a file, which must stay hidden.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision

from classifier_service.torch_tools import torchvision_models

SMALL = "mobilenet_v3_small"
MISSING = "resnet18"


def write_weights(folder: Path, name: str = SMALL) -> Path:
    torch.manual_seed(1234)
    module = torchvision.models.get_model(name, weights=None)
    path = folder / torchvision_models.weights_file_name(name)
    torch.save(module.state_dict(), path)
    return path
