"""MobileNet v1 and v2: depthwise-separable convolutions, then inverted residuals.

Papers:
    "MobileNets: Efficient Convolutional Neural Networks for Mobile Vision Applications",
    Howard et al., 2017, arXiv:1704.04861.
    "MobileNetV2: Inverted Residuals and Linear Bottlenecks", Sandler et al., 2018, arXiv:1801.04381.

Follows the paper (v1):
    - Table 1: a full 3×3/2 convolution to 32 channels, then thirteen depthwise-separable layers
      (3×3 depthwise + BN + ReLU, 1×1 pointwise + BN + ReLU) to 1024 channels, global average
      pooling and one fully connected layer.
    - Width multiplier α (``width_mult``): every layer's channel count is ⌊α·c⌋. Resolution
      multiplier ρ (``resolution_mult``): the intended input side is round(224·ρ); the network is
      fully convolutional, so ρ only sets ``default_input_size`` (the paper's 224, 192, 160, 128 are
      ρ = 1, 6/7, 5/7, 4/7). α=1, ρ=1: 4.2M parameters and 569M multiply-adds (Table 8).

Follows the paper (v2):
    - Table 2: a 3×3/2 convolution to 32 channels, seventeen bottlenecks (t, c, n, s) =
      (1,16,1,1), (6,24,2,2), (6,32,3,2), (6,64,4,2), (6,96,3,1), (6,160,3,2), (6,320,1,1),
      a 1×1 convolution to 1280 channels, global average pooling and a linear classifier.
    - Bottleneck (Table 1): 1×1 expansion by t + BN + ReLU6, 3×3 depthwise (stride s) + BN + ReLU6,
      1×1 linear projection + BN (no non-linearity: the linear bottleneck); a residual connection
      when stride is 1 and the channel count is unchanged.
    - ``width_mult`` scales every layer but the last 1×1, which is only widened (α > 1), never narrowed.

Deviates, and why:
    - v2 follows torchvision (so its checkpoints load): channel counts rounded to multiples of 8
      (``make_divisible``), 20% dropout before the classifier, torchvision's initialisation.
    - v1 has no reference library layout; its BN after every convolution is the paper's
      ("all layers are followed by a batchnorm and ReLU"), dropout (``drop_rate``) is off by default.
    - ``small_input=True`` (v2 only): the stem and the first stride-2 bottleneck stage run at
      stride 1, a total reduction of 8 instead of 32, for 28-32 px images such as MNIST. The
      ``state_dict`` layout is unchanged.

Layout: ``mobilenet_v2`` has torchvision's ``state_dict`` keys and shapes (3,504,872 parameters).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from canon.models._validate import check_image_input
from canon.registry import register_model

__all__ = ["MobileNetV1", "MobileNetV2", "InvertedResidual", "DepthwiseSeparable", "make_divisible",
           "mobilenet_v1", "mobilenet_v2"]

PAPER_V1 = "MobileNets: Efficient Convolutional Neural Networks for Mobile Vision Applications, 2017, arXiv:1704.04861"
PAPER_V2 = "MobileNetV2: Inverted Residuals and Linear Bottlenecks, 2018, arXiv:1801.04381"

# Table 1 of v1 after the stem: (stride of the depthwise conv, output channels of the pointwise conv).
V1_LAYERS = ((1, 64), (2, 128), (1, 128), (2, 256), (1, 256), (2, 512),
             (1, 512), (1, 512), (1, 512), (1, 512), (1, 512), (2, 1024), (1, 1024))
# Table 2 of v2: (expansion t, output channels c, repeats n, first stride s).
V2_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
               (6, 160, 3, 2), (6, 320, 1, 1))


def make_divisible(value: float, divisor: int = 8) -> int:
    """The multiple of ``divisor`` nearest ``value``, at least ``divisor``, never below 90% of ``value``."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def conv_bn_act(in_chs: int, out_chs: int, kernel_size: int = 3, stride: int = 1, groups: int = 1,
                activation: type[nn.Module] = nn.ReLU6) -> nn.Sequential:
    """Conv (no bias, 'same' padding) + BN + activation; keys ``0`` (conv) and ``1`` (BN) as torchvision."""
    return nn.Sequential(
        nn.Conv2d(in_chs, out_chs, kernel_size, stride, (kernel_size - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_chs),
        activation(inplace=True),
    )


def _check_common(num_classes, in_chans, width_mult):
    if not isinstance(num_classes, int) or num_classes < 0:
        raise ValueError(f"num_classes must be an int >= 0, got {num_classes!r}")
    if not isinstance(in_chans, int) or in_chans < 1:
        raise ValueError(f"in_chans must be an int >= 1, got {in_chans!r}")
    if not isinstance(width_mult, (int, float)) or width_mult <= 0:
        raise ValueError(f"width_mult must be a number > 0, got {width_mult!r}")


class _Classifier(nn.Module):
    """Shared head: global average pool, dropout, linear (``classifier.1`` as torchvision)."""

    def _model_name(self) -> str:
        return getattr(self, "canon_name", type(self).__name__)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)  # (N, num_features)
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image_input(x, in_chans=self.in_chans, min_size=self.output_stride, model_name=self._model_name())
        return self.forward_head(self.forward_features(x))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh linear head with ``num_classes`` outputs (0: identity, pooled features)."""
        if not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"num_classes must be an int >= 0, got {num_classes!r}")
        self.num_classes = num_classes
        self.classifier[1] = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()
        if num_classes:
            nn.init.normal_(self.classifier[1].weight, 0, 0.01)
            nn.init.zeros_(self.classifier[1].bias)


# ----------------------------------------------------------------------------- MobileNet v1
class DepthwiseSeparable(nn.Module):
    """3×3 depthwise conv + BN + ReLU, then 1×1 pointwise conv + BN + ReLU (v1, Fig. 3 right)."""

    def __init__(self, in_chs: int, out_chs: int, stride: int):
        super().__init__()
        self.depthwise = conv_bn_act(in_chs, in_chs, 3, stride, groups=in_chs, activation=nn.ReLU)
        self.pointwise = conv_bn_act(in_chs, out_chs, 1, activation=nn.ReLU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class MobileNetV1(_Classifier):
    """MobileNet v1 with width multiplier α (``width_mult``) and resolution multiplier ρ (``resolution_mult``).

    ``default_input_size`` is (in_chans, round(224ρ), round(224ρ)); any input of at least 32 px works.
    """

    def __init__(self, *, num_classes: int = 1000, in_chans: int = 3, width_mult: float = 1.0,
                 resolution_mult: float = 1.0, drop_rate: float = 0.0):
        super().__init__()
        _check_common(num_classes, in_chans, width_mult)
        if not isinstance(resolution_mult, (int, float)) or not 0 < resolution_mult <= 1:
            raise ValueError(f"resolution_mult must be in (0, 1], got {resolution_mult!r}")
        self.num_classes, self.in_chans = num_classes, in_chans
        self.width_mult, self.resolution_mult = width_mult, resolution_mult
        side = round(224 * resolution_mult)
        self.default_input_size = (in_chans, side, side)
        self.output_stride = 32

        in_chs = int(32 * width_mult)
        layers: list[nn.Module] = [conv_bn_act(in_chans, in_chs, 3, 2, activation=nn.ReLU)]  # (N, 32α, H/2, W/2)
        for stride, chs in V1_LAYERS:
            out_chs = int(chs * width_mult)
            layers.append(DepthwiseSeparable(in_chs, out_chs, stride))
            in_chs = out_chs
        self.features = nn.Sequential(*layers)  # (N, 1024α, H/32, W/32)
        self.num_features = in_chs
        self.classifier = nn.Sequential(nn.Dropout(drop_rate),
                                        nn.Linear(in_chs, num_classes) if num_classes else nn.Identity())
        _init_weights(self)


# ----------------------------------------------------------------------------- MobileNet v2
class InvertedResidual(nn.Module):
    """Expand (1×1, ×t) → depthwise 3×3 → linear project (1×1); residual when shapes match (v2, Table 1)."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, expand_ratio: int):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        hidden = int(round(in_chs * expand_ratio))
        self.use_res_connect = stride == 1 and in_chs == out_chs
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(conv_bn_act(in_chs, hidden, 1))  # (N, t·C, H, W)
        layers += [
            conv_bn_act(hidden, hidden, 3, stride, groups=hidden),  # (N, t·C, H/s, W/s)
            nn.Conv2d(hidden, out_chs, 1, bias=False),  # linear bottleneck: no activation
            nn.BatchNorm2d(out_chs),
        ]
        self.conv = nn.Sequential(*layers)
        self.out_channels = out_chs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(_Classifier):
    """MobileNet v2 (torchvision layout); ``small_input=True`` for 28-32 px images (reduction 8)."""

    def __init__(self, *, num_classes: int = 1000, in_chans: int = 3, width_mult: float = 1.0,
                 dropout: float = 0.2, small_input: bool = False):
        super().__init__()
        _check_common(num_classes, in_chans, width_mult)
        self.num_classes, self.in_chans = num_classes, in_chans
        self.width_mult, self.small_input = width_mult, small_input

        stem_stride = 1 if small_input else 2
        in_chs = make_divisible(32 * width_mult)
        self.num_features = make_divisible(1280 * max(1.0, width_mult))
        layers: list[nn.Module] = [conv_bn_act(in_chans, in_chs, 3, stem_stride)]
        reduction = stem_stride
        for stage, (t, c, n, s) in enumerate(V2_SETTINGS):
            if small_input and stage == 1:
                s = 1  # the first stride-2 stage keeps the resolution of a 28-32 px input
            out_chs = make_divisible(c * width_mult)
            for i in range(n):
                layers.append(InvertedResidual(in_chs, out_chs, s if i == 0 else 1, t))
                in_chs = out_chs
            reduction *= s
        layers.append(conv_bn_act(in_chs, self.num_features, 1))
        self.features = nn.Sequential(*layers)  # (N, 1280, H/32, W/32) or (N, 1280, H/8, W/8)
        self.output_stride = reduction
        self.classifier = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity())
        _init_weights(self)


def _init_weights(model: nn.Module) -> None:
    """torchvision's: Kaiming-normal (fan out) convolutions, unit BN, N(0, 0.01) linear, zero biases."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


# ----------------------------------------------------------------------------- registered names
@register_model(MobileNetV1, task="classification", paper=PAPER_V1, input_size=(3, 224, 224), compatible_with=None)
def mobilenet_v1(**kwargs) -> MobileNetV1:
    return MobileNetV1(**kwargs)


@register_model(MobileNetV2, task="classification", paper=PAPER_V2, input_size=(3, 224, 224),
                compatible_with="torchvision")
def mobilenet_v2(**kwargs) -> MobileNetV2:
    return MobileNetV2(**kwargs)
