"""Exported models under OpenVINO in bfloat16: the fast precision of CPUs that have it.

Only a model that asks for bf16 (``precision.py``) on a CPU with bfloat16 instructions runs
here; everything else runs under ONNX Runtime in fp32.  The same ONNX file as ONNX Runtime's,
compiled by OpenVINO's CPU plugin with bf16 as its inference precision: EfficientNet-Lite0, one
thread, batch 4, ran at 183 images/s against 107 in fp32 on an AVX-512 BF16 machine.  Imported
only when a model asks for bf16 (the ``bf16`` extra installs OpenVINO).
"""

from __future__ import annotations

import functools
import threading
from pathlib import Path
from typing import Any

import numpy as np
import openvino

from classifier_service.loaded import Logits
from classifier_service.preprocess import Pixels


@functools.cache
def _core() -> Any:
    """One OpenVINO runtime per process: its plugins load once, whatever the models."""
    return openvino.Core()


def compile_options(threads: int) -> dict[str, Any]:
    return {
        "INFERENCE_PRECISION_HINT": "bf16",
        # The replica's thread setting is the whole of its compute, as under ONNX Runtime:
        # one stream of inference requests, run on that many threads.
        "INFERENCE_NUM_THREADS": threads,
        "NUM_STREAMS": 1,
        "PERFORMANCE_HINT": "LATENCY",
        # Replicas share the machine's cores; pinning each one's threads to the first cores
        # would put every replica on the same ones.
        "ENABLE_CPU_PINNING": False,
    }


class OpenVinoForward:
    """A compiled model behind the runtime-neutral ``LoadedModel.forward``."""

    def __init__(self, compiled: Any) -> None:
        self.compiled = compiled
        self.output = compiled.output(0)
        # An inference request runs one batch at a time: one per thread that calls this (a
        # replica replaces its inference thread after a time limit while the old one runs on).
        self._requests = threading.local()

    def __call__(self, batch: Pixels) -> Logits:
        request = getattr(self._requests, "request", None)
        if request is None:
            request = self._requests.request = self.compiled.create_infer_request()
        result = request.infer({0: batch})
        # A copy: the request reuses its output buffer for the next batch.
        logits: Logits = np.array(result[self.output], dtype=np.float32)
        return logits


def load_file(model_file: Path, threads: int) -> tuple[OpenVinoForward, str]:
    """``model_file`` compiled for the CPU in bf16, and what runs it (for the logs)."""
    compiled = _core().compile_model(str(model_file), "CPU", compile_options(threads))
    runtime = (
        f"openvino {openvino.__version__.split('-')[0]}, CPU, "
        f"{threads} thread{'s' if threads > 1 else ''}"
    )
    return OpenVinoForward(compiled), runtime
