"""A tiny 3-class colour classifier built here, offline, and its model repository folders.

A conv net trained for a few steps on generated red, green and blue pictures: small enough to
train in a second, real enough that a replica must load, export and run it to get its labels.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
SIZE = 32
PREPROCESSING = {
    "input_size": SIZE,
    "resize": SIZE,
    "crop": "center",
    "mean": [0.5, 0.5, 0.5],
    "std": [0.5, 0.5, 0.5],
    "interpolation": "bilinear",
}


def picture(colour: str, size: int = 64, fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (size, size), COLOURS[colour]).save(out, fmt)
    return out.getvalue()


def trained_network() -> nn.Module:
    torch.manual_seed(0)
    network = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, len(COLOURS)),
    )
    # Each colour at random brightness, with noise, normalised as PREPROCESSING says.
    rgb = torch.tensor(list(COLOURS.values()), dtype=torch.float32) / 255
    classes = torch.arange(len(COLOURS)).repeat(16)
    scale = torch.empty(len(classes), 1).uniform_(0.6, 1.1)
    pixels = (rgb[classes] * scale).clamp(0, 1)[:, :, None, None].expand(-1, -1, SIZE, SIZE)
    pixels = pixels + 0.05 * torch.randn(len(classes), 3, SIZE, SIZE)
    inputs = (pixels - 0.5) / 0.5
    optimiser = torch.optim.Adam(network.parameters(), lr=0.05)
    for _ in range(60):
        optimiser.zero_grad()
        loss = nn.functional.cross_entropy(network(inputs), classes)
        loss.backward()
        optimiser.step()
    network.eval()
    with torch.no_grad():
        accuracy = (network(inputs).argmax(1) == classes).float().mean().item()
    assert accuracy == 1.0, f"the tiny network did not learn its colours ({accuracy:.2f})"
    return network


def write_folder(
    folder: Path,
    network: dict[str, Any],
    labels: list[str],
    *,
    title: str = "Tiny colours",
    preprocessing: dict[str, Any] | None = None,
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    model = {"title": title, "network": network, "preprocessing": preprocessing or PREPROCESSING}
    (folder / "model.json").write_text(json.dumps(model), encoding="utf-8")
    (folder / "labels.txt").write_text("\n".join(labels) + "\n", encoding="utf-8")
    return folder


def write_torchscript(folder: Path, network: nn.Module, labels: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(1, 3, SIZE, SIZE)
    with warnings.catch_warnings():
        # torch 2.14 marks torch.jit deprecated; TorchScript files are what users bring.
        warnings.filterwarnings("ignore", r"`torch\.jit\.", FutureWarning)
        traced = torch.jit.trace(network, example)  # type: ignore[no-untyped-call]
        traced.save(str(folder / "model.pt"))
    return write_folder(folder, {"format": "torchscript", "file": "model.pt"}, labels)


def write_onnx(folder: Path, network: nn.Module, labels: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation notice
        _export_onnx(network, folder)
    return write_folder(folder, {"format": "onnx", "file": "model.onnx"}, labels)


def _export_onnx(network: nn.Module, folder: Path) -> None:
    torch.onnx.export(
        network,
        (torch.zeros(2, 3, SIZE, SIZE),),
        str(folder / "model.onnx"),
        dynamo=False,
        input_names=["pixels"],
        output_names=["logits"],
        dynamic_axes={"pixels": {0: "batch"}, "logits": {0: "batch"}},
    )


def write_state_dict(folder: Path, network: nn.Module, labels: list[str], arch: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(network.state_dict(), folder / "weights.pth")
    spec = {"format": "state_dict", "file": "weights.pth", "architecture": arch}
    return write_folder(folder, spec, labels)
