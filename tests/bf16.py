"""Whether bf16 can run here: tests of the bf16 path itself are skipped elsewhere, saying why."""

from __future__ import annotations

import pytest

from classifier_service import precision
from classifier_service.installed import installed

BF16_HERE = precision.native_bf16() is not None and installed("openvino")

needs_bf16 = pytest.mark.skipif(
    not BF16_HERE, reason="this CPU has no bfloat16 instructions, or OpenVINO is not installed"
)
