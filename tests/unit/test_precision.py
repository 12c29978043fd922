"""bf16 where the CPU has it and a model asks for it; fp32, exact, everywhere else.

The fallback is tested by forcing "no bfloat16 instructions", so it runs on every machine;
the bf16 path itself only where this CPU has them and OpenVINO is installed (it is skipped,
saying so, elsewhere).  Lite0 in bf16 on the ImageNet sample: tests/service/test_precision.py."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from torch import nn

from classifier_service import onnx_models, precision
from classifier_service.precision import Precision
from classifier_service.repository import BrokenModelFolder, read_folder, scan
from classifier_service.settings import ClassifierSettings
from shared.errors import SettingsError
from tests import tiny_models
from tests.bf16 import needs_bf16

LABELS = ["red", "green", "blue"]


@pytest.fixture(scope="module")
def network() -> nn.Module:
    return tiny_models.trained_network()


def _ask(folder: Path, wanted: str) -> Path:
    data = json.loads((folder / "model.json").read_text())
    (folder / "model.json").write_text(json.dumps({**data, "precision": wanted}))
    return folder


def _settings(tmp_path: Path, **env: str) -> ClassifierSettings:
    return ClassifierSettings.from_env(
        {"IMGQ_MODEL_DIR": str(tmp_path), "IMGQ_MODEL_CACHE": str(tmp_path / "cache"), **env}
    )


def _colours(size: int = tiny_models.SIZE) -> np.ndarray:
    """The three colours, preprocessed as the tiny model's folder says (mean = std = 0.5)."""
    rgb = np.array(list(tiny_models.COLOURS.values()), dtype=np.float32) / 255
    pixels = np.broadcast_to(rgb[:, :, None, None], (3, 3, size, size))
    return np.ascontiguousarray((pixels - 0.5) / 0.5, dtype=np.float32)


def test_cpu_flags_are_read_from_cpuinfo(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n\nflags : x\n")
    flags = precision.cpu_flags(cpuinfo)
    assert "avx512_bf16" in flags
    assert precision.native_bf16(flags) == "avx512_bf16"
    assert precision.native_bf16(flags | {"amx_bf16"}) == "amx_bf16"
    assert precision.native_bf16(frozenset({"avx2", "avx512f"})) is None
    assert precision.cpu_flags(tmp_path / "absent") == frozenset()


@pytest.mark.parametrize(
    ("on_cpu", "cpu_bf16", "openvino", "expected", "why"),
    [
        (True, "avx512_bf16", True, Precision.BF16, ""),
        (True, None, True, Precision.FP32, "no bfloat16 instructions"),
        (True, "amx_bf16", False, Precision.FP32, "OpenVINO"),
        (False, "amx_bf16", True, Precision.FP32, "CUDA"),
    ],
)
def test_bf16_only_where_it_is_native(
    on_cpu: bool, cpu_bf16: str | None, openvino: bool, expected: Precision, why: str
) -> None:
    chosen, reason = precision.choose(
        Precision.BF16, on_cpu=on_cpu, cpu_bf16=cpu_bf16, openvino=openvino
    )
    assert chosen is expected
    assert why in reason
    # fp32 is never changed, whatever the machine.
    assert precision.choose(
        Precision.FP32, on_cpu=on_cpu, cpu_bf16=cpu_bf16, openvino=openvino
    ) == (Precision.FP32, "")


def test_precision_is_asked_for_by_the_folder_or_the_setting(tmp_path: Path) -> None:
    folder = tmp_path / "colours" / "1"
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(b"not read")
    tiny_models.write_folder(folder, {"format": "onnx", "file": "model.onnx"}, LABELS)
    assert read_folder(folder).precision is None
    assert read_folder(_ask(folder, "bf16")).precision is Precision.BF16
    with pytest.raises(BrokenModelFolder, match="precision must be one of fp32, bf16"):
        read_folder(_ask(folder, "int8"))
    assert ClassifierSettings.from_env({}).precision is Precision.FP32
    assert ClassifierSettings.from_env({"IMGQ_PRECISION": "BF16"}).precision is Precision.BF16
    with pytest.raises(SettingsError, match="IMGQ_PRECISION must be one of fp32, bf16"):
        ClassifierSettings.from_env({"IMGQ_PRECISION": "fp16"})


def test_without_bf16_instructions_a_bf16_model_runs_exact_fp32_and_says_so(
    tmp_path: Path,
    network: nn.Module,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(precision, "native_bf16", lambda flags=None: None)
    asked = _ask(tiny_models.write_onnx(tmp_path / "colours" / "1", network, LABELS), "bf16")
    tiny_models.write_onnx(tmp_path / "colours" / "2", network, LABELS)
    with caplog.at_level(logging.WARNING):
        fallback, plain = onnx_models.load_folders(scan(tmp_path).folders, _settings(tmp_path))
    assert fallback.precision is plain.precision is Precision.FP32
    assert fallback.runtime.startswith("onnxruntime")
    assert "model colours@1 runs in fp32, not bf16: this CPU has no bfloat16 instructions" in (
        caplog.text
    )
    # The fallback is the fp32 model itself: the same logits, bit for bit.
    assert np.array_equal(fallback.forward(_colours()), plain.forward(_colours()))
    assert asked.name == "1"


@needs_bf16
def test_with_bf16_instructions_a_model_that_asks_runs_in_bf16(
    tmp_path: Path, network: nn.Module, caplog: pytest.LogCaptureFixture
) -> None:
    _ask(tiny_models.write_onnx(tmp_path / "colours" / "1", network, LABELS), "bf16")
    tiny_models.write_onnx(tmp_path / "colours" / "2", network, LABELS)
    # The setting asks for every model that does not say; a folder's own choice wins.
    _ask(tiny_models.write_onnx(tmp_path / "colours" / "3", network, LABELS), "fp32")
    settings = _settings(tmp_path, IMGQ_PRECISION="bf16")
    with caplog.at_level(logging.INFO):
        one, two, three = onnx_models.load_folders(scan(tmp_path).folders, settings)
    assert (one.precision, two.precision, three.precision) == ("bf16", "bf16", "fp32")
    assert one.runtime.startswith("openvino")
    assert three.runtime.startswith("onnxruntime")
    assert "loaded colours@1 (openvino" in caplog.text
    reduced, exact = one.forward(_colours()), three.forward(_colours())
    assert reduced.dtype == np.float32
    assert reduced.argmax(axis=1).tolist() == exact.argmax(axis=1).tolist() == [0, 1, 2]
    # bfloat16 keeps 8 bits of mantissa: close, not equal.
    assert np.abs(reduced - exact).max() <= 0.05 * np.abs(exact).max()
    # Each batch size, as the replica warms them up.
    assert one.forward(np.concatenate([_colours()] * 3)).shape == (9, 3)
