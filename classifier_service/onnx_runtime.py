"""Exported models under ONNX Runtime: the replica's default runtime, in fp32.

On this project's 2-core machines (EfficientNet-Lite0, one thread, the whole classify_batch
path) ONNX Runtime runs 2-3x the frozen TorchScript's speed, with logits within 2e-5 of eager
torch and the same top-1 on every photo of the ImageNet sample (tests/service/test_onnx_runtime.py
checks every catalogue model; docs/benchmarks.md has the speed).  OpenVINO in fp32 is no
faster; in bf16 it is, where the CPU has bfloat16 instructions (``openvino_runtime.py``).
Without torch in the process, a replica holding all three models stays near 260 MB.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime

from classifier_service.loaded import Logits
from classifier_service.preprocess import Pixels
from classifier_service.settings import Device
from shared.errors import SettingsError

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def providers(device: Device) -> list[str]:
    """CUDA first where asked for or (``auto``) installed, e.g. with onnxruntime-gpu; the CPU
    provider always last, for any operator CUDA does not run."""
    available = onnxruntime.get_available_providers()
    if device is Device.CUDA and CUDA not in available:
        raise SettingsError(
            f"IMGQ_DEVICE=cuda but ONNX Runtime offers only {', '.join(available)} "
            "(install onnxruntime-gpu in place of onnxruntime, on a machine with CUDA)"
        )
    if device is not Device.CPU and CUDA in available:
        return [CUDA, CPU]
    return [CPU]


@functools.cache
def _register_shared_arena() -> None:
    """One CPU memory arena for every session of the process, instead of one each.

    A replica runs one model at a time, so the sessions can take turns with the same memory:
    with three models warmed up to batch 4 the replica held 258 MB instead of 394 MB.
    Registered once per process (ONNX Runtime refuses a second registration).
    """
    onnxruntime.create_and_register_allocator(
        onnxruntime.OrtMemoryInfo(
            "Cpu",
            onnxruntime.OrtAllocatorType.ORT_ARENA_ALLOCATOR,
            0,
            onnxruntime.OrtMemType.DEFAULT,
        ),
        onnxruntime.OrtArenaCfg({}),
    )


def return_freed_memory() -> None:
    """Hand the heap freed after loading back to the system (glibc keeps it otherwise).

    Creating a session parses the whole model file and then frees that copy: about 45 MB of
    a replica's resident memory for three models, never used again.
    """
    # Not glibc (no libc.so.6, or no malloc_trim): nothing to trim, or no way to.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def session_options(threads: int) -> Any:
    _register_shared_arena()
    options = onnxruntime.SessionOptions()
    # Replicas x threads must not exceed the cores (oversubscribed replicas ran 8x slower
    # here): the replica's thread setting is the whole of its compute, and one operator at a
    # time (sequential, inter-op 1) is all a network of this shape can use anyway.
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle pool threads would otherwise spin for a while after each run, burning a core that
    # another replica (or the broker) could use: on a busy 2-core machine, a 2-thread session
    # that spun ran half as fast as one that did not.  With one thread there is no pool.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.use_env_allocators", "1")
    return options


class OnnxForward:
    """One inference session behind the runtime-neutral ``LoadedModel.forward``."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.input = session.get_inputs()[0].name
        self.output = session.get_outputs()[0].name

    def __call__(self, batch: Pixels) -> Logits:
        (logits,) = self.session.run([self.output], {self.input: batch})
        result: Logits = np.asarray(logits, dtype=np.float32)
        return result


def load_file(model_file: Path, threads: int, device: Device) -> tuple[Any, str]:
    """An inference session for ``model_file``, and what runs it (for the logs)."""
    chosen = providers(device)
    session = onnxruntime.InferenceSession(
        str(model_file), session_options(threads), providers=chosen
    )
    runtime = (
        f"onnxruntime {onnxruntime.__version__}, {session.get_providers()[0]}, "
        f"{threads} thread{'s' if threads > 1 else ''}"
    )
    return session, runtime
