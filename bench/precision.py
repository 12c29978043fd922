"""bf16 against fp32: the agreement on the sample and the speed-up, measured in a subprocess
(``bench/precision_worker.py``) so that this process never loads a runtime.

The layout is the one the figure this option rests on was taken with: EfficientNet-Lite0, one
thread, batch 4, the forward pass alone (decoding and preprocessing cost the same either way).
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from compose.stack import REPO

_RESULT = "RESULT "
THREADS = 1
BATCH = 4


@dataclass(frozen=True, slots=True)
class PrecisionResult:
    model: str
    photos: int
    same_top1: int
    max_logit_difference: float
    # The CPU's bfloat16 instructions (e.g. avx512_bf16), or None: then "bf16" ran fp32.
    cpu_bf16: str | None
    # What the model asking for bf16 actually ran in.
    precision: str
    threads: int
    batch: int
    fp32_images_per_s: float
    bf16_images_per_s: float
    bf16_runtime: str = ""

    @property
    def ran_bf16(self) -> bool:
        return self.precision == "bf16"

    @property
    def agreement(self) -> float:
        return self.same_top1 / self.photos if self.photos else 0.0

    @property
    def speedup(self) -> float | None:
        if not self.fp32_images_per_s:
            return None
        return self.bf16_images_per_s / self.fp32_images_per_s

    @classmethod
    def from_json(cls, data: dict[str, object]) -> PrecisionResult:
        rates = data["images_per_s"]
        runtime = data.get("runtime")
        assert isinstance(rates, dict)
        cpu = data.get("cpu_bf16")
        return cls(
            model=str(data["model"]),
            photos=int(str(data["photos"])),
            same_top1=int(str(data["same_top1"])),
            max_logit_difference=float(str(data["max_logit_difference"])),
            cpu_bf16=None if cpu is None else str(cpu),
            precision=str(data["precision"]),
            threads=int(str(data["threads"])),
            batch=int(str(data["batch"])),
            fp32_images_per_s=float(rates["fp32"]),
            bf16_images_per_s=float(rates["bf16"]),
            bf16_runtime=str(runtime.get("bf16", "")) if isinstance(runtime, dict) else "",
        )


def measure(
    images: Path, log_dir: Path, *, model: str, seconds: float, timeout: float = 600.0
) -> PrecisionResult:
    command = [sys.executable, "-m", "bench.precision_worker", "--model", model]
    command += ["--images", str(images), "--threads", str(THREADS), "--batch", str(BATCH)]
    command += ["--seconds", str(seconds)]
    with open(log_dir / "precision-worker.log", "a") as log:
        done = subprocess.run(
            command, cwd=REPO, stdout=subprocess.PIPE, stderr=log, text=True, timeout=timeout
        )
    for line in done.stdout.splitlines():
        if line.startswith(_RESULT):
            return PrecisionResult.from_json(json.loads(line.removeprefix(_RESULT)))
    raise RuntimeError(f"the precision worker exited ({done.returncode}) without a result")
