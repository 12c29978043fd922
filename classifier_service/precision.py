"""The arithmetic a model runs in: fp32 (exact, the default) or bfloat16 where the CPU has it.

bfloat16 keeps fp32's exponent and 8 bits of its mantissa: on a CPU with bfloat16 instructions
(AVX-512 BF16, AMX) OpenVINO runs EfficientNet-Lite0 at about 1.7x its fp32 speed (one thread,
batch 4) with the same top-1 on 97 to 99 % of the ImageNet sample (``python -m bench`` measures
both: the "bf16 vs fp32" rows).  Without such instructions it would be emulated, slower than
fp32, so a replica runs fp32 there instead and says why.  ONNX Runtime cannot do it: an ONNX
Conv takes no bfloat16 input, and its CPU provider has no bfloat16 convolution; OpenVINO lowers
the same fp32 ONNX graph to bf16 itself.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

# Linux's names (/proc/cpuinfo) for the instructions that compute in bfloat16.
BF16_FLAGS = ("amx_bf16", "avx512_bf16")
_CPUINFO = Path("/proc/cpuinfo")


class Precision(StrEnum):
    FP32 = "fp32"
    BF16 = "bf16"


def cpu_flags(cpuinfo: Path = _CPUINFO) -> frozenset[str]:
    """The first CPU's feature flags; empty where they cannot be read (not Linux)."""
    try:
        text = cpuinfo.read_text(encoding="ascii", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def native_bf16(flags: frozenset[str] | None = None) -> str | None:
    """The bfloat16 instruction set this CPU has (``amx_bf16`` before ``avx512_bf16``), or None."""
    flags = cpu_flags() if flags is None else flags
    return next((flag for flag in BF16_FLAGS if flag in flags), None)


def choose(
    requested: Precision, *, on_cpu: bool, cpu_bf16: str | None, openvino: bool
) -> tuple[Precision, str]:
    """The precision a model runs at, and why it is not the one requested ("" when it is)."""
    if requested is Precision.FP32:
        return Precision.FP32, ""
    if not on_cpu:
        return Precision.FP32, "bf16 is for the CPU, and this model runs on CUDA"
    if cpu_bf16 is None:
        return Precision.FP32, (
            f"this CPU has no bfloat16 instructions ({' or '.join(BF16_FLAGS)}), "
            "where bf16 would be slower than fp32"
        )
    if not openvino:
        return Precision.FP32, "OpenVINO, which runs bf16, is not installed (the `bf16` extra)"
    return Precision.BF16, ""
