"""The ResNet paper's CIFAR-10 networks: ResNet-20/32/44/56/110 and their plain counterparts.

Paper: "Deep Residual Learning for Image Recognition", He, Zhang, Ren, Sun, 2015, arXiv:1512.03385,
Section 4.2 (CIFAR-10 and Analysis), Table 6 and Fig. 6.

Follows the paper:
    - 32×32 inputs; the first layer is a 3×3 convolution with 16 filters; then three stages of
      ``n`` blocks of two 3×3 convolutions each, with 16, 32 and 64 filters on 32×32, 16×16 and
      8×8 maps (2n layers per map size); subsampling by convolutions of stride 2 in the first
      block of stages 2 and 3; global average pooling and a 10-way fully connected layer. That is
      6n+2 weighted layers: n = 3, 5, 7, 9, 18 give ResNet-20, 32, 44, 56, 110 (0.27M, 0.46M,
      0.66M, 0.85M and 1.7M parameters; ResNet-20 has exactly 269,722 at 10 classes).
    - Shortcuts connect each pair of 3×3 layers (3n shortcuts). Option A, the paper's choice on
      CIFAR (``shortcut="identity"``, the default): identity everywhere; where the map halves and
      the width doubles, the shortcut takes every second pixel (stride 2) and pads the extra
      channels with zeros, so it has no parameters and the residual net has exactly the plain
      net's depth, width and parameter count. Option B (``shortcut="projection"``): a 1×1
      convolution of stride 2 (plus BN) where the shape changes, identity elsewhere (Eqn. 2).
    - Plain counterparts (``plain20_cifar`` ...; ``shortcut="none"``): the same stack without any
      shortcut, the networks of Fig. 6 (left) that show the degradation problem. As the paper
      builds them, the residual net is the plain net with shortcuts inserted, so one class holds
      both.
    - BN right after each convolution and before the activation; ReLU after the addition; no
      dropout; convolutions without bias (BN's shift replaces it).
    - He initialisation ("Delving Deep into Rectifiers", He et al. 2015, arXiv:1502.01852) of
      every convolution: normal with std sqrt(2 / fan_out), the fan-out form that reference
      proves as sound as the fan-in one (and the form canon's and torchvision's ImageNet ResNets
      use); BN scales 1 and shifts 0.

Deviates, and why:
    - Where the zero channels go is not stated in the paper: here the identity fills the first
      ``in_chs`` channels and the zeros come after them. Any placement has the same parameters and,
      up to a permutation of the block's output channels, the same function class.
    - The fully connected layer keeps PyTorch's default initialisation (the paper does not say).
    - ``num_classes`` and ``in_chans`` make the same design usable beyond CIFAR-10, and
      ``num_classes=0`` leaves the head an identity (pooled 64-d features), as every canon
      classifier.

None of these names is layout-compatible with a library: torchvision has no CIFAR ResNets. The
residual blocks are canon's :class:`~canon.models.classification.resnet.BasicBlock`, so their
``state_dict`` keys (``layer<k>.<i>.conv<j>``/``bn<j>``, ``downsample.0``/``.1`` for option B)
read like canon's ImageNet ResNets.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from canon.models._validate import check_image_input
from canon.models.classification.resnet import BasicBlock, conv1x1, conv3x3
from canon.registry import register_model

__all__ = ["ZeroPadShortcut", "PlainBlock", "CifarResNet", "SHORTCUTS", "resnet20_cifar", "resnet32_cifar",
           "resnet44_cifar", "resnet56_cifar", "resnet110_cifar", "plain20_cifar", "plain32_cifar",
           "plain44_cifar", "plain56_cifar", "plain110_cifar"]

PAPER = "Deep Residual Learning for Image Recognition, 2015, arXiv:1512.03385"

# "identity": option A (zero-padding for increased dimensions); "projection": option B; "none": plain net.
SHORTCUTS = ("identity", "projection", "none")
STAGE_NAMES = ("layer1", "layer2", "layer3")
STAGE_WIDTHS = (16, 32, 64)


def blocks_per_stage(depth: int) -> int:
    """``n`` of a 6n+2-layer network (depth 20 -> 3, 110 -> 18); ValueError for other depths."""
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ValueError(f"depth must be 6n+2 for a whole n >= 1 (8, 14, 20, 32, 44, 56, 110, ...), got {depth!r}")
    return (depth - 2) // 6


class ZeroPadShortcut(nn.Module):
    """Option A: identity with stride-``stride`` subsampling and zero channels up to ``out_chs``."""

    def __init__(self, in_chs: int, out_chs: int, stride: int = 2):
        super().__init__()
        if out_chs < in_chs:
            raise ValueError(f"a zero-padding shortcut only widens: out_chs {out_chs} < in_chs {in_chs}")
        self.in_chs, self.out_chs, self.stride = in_chs, out_chs, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, ::self.stride, ::self.stride]  # (N, in_chs, ceil(H/s), ceil(W/s))
        return F.pad(x, (0, 0, 0, 0, 0, self.out_chs - self.in_chs))  # (N, out_chs, ...), new channels 0

    def extra_repr(self) -> str:
        return f"{self.in_chs}, {self.out_chs}, stride={self.stride}"


class PlainBlock(nn.Module):
    """Two 3×3 conv-BN-ReLU layers and no shortcut: a block of the paper's plain nets."""

    def __init__(self, in_chs: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = conv3x3(in_chs, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)))  # y = F(x): no "+ x"


def make_block(in_chs: int, planes: int, stride: int, shortcut: str) -> nn.Module:
    """One block of a stage: plain, or canon's BasicBlock with the option-A or option-B shortcut."""
    if shortcut == "none":
        return PlainBlock(in_chs, planes, stride)
    downsample = None
    if stride != 1 or in_chs != planes:
        if shortcut == "identity":
            downsample = ZeroPadShortcut(in_chs, planes, stride)
        else:
            downsample = nn.Sequential(conv1x1(in_chs, planes, stride), nn.BatchNorm2d(planes))
    return BasicBlock(in_chs, planes, stride, downsample)


class CifarResNet(nn.Module):
    """The 6n+2-layer CIFAR network of the paper's Section 4.2, residual or plain.

    Args:
        depth: 6n+2 weighted layers (20, 32, 44, 56, 110 in the paper).
        num_classes: classifier outputs (10 for CIFAR-10); 0 leaves the head an identity.
        in_chans: input image channels.
        shortcut: ``"identity"`` (option A: zero-padding where the width grows, no parameters),
            ``"projection"`` (option B: 1×1 convolution + BN where the shape changes) or
            ``"none"`` (the plain counterpart, no shortcuts at all).

    Stages ``layer1``, ``layer2``, ``layer3`` give (N, 16, H, W), (N, 32, H/2, W/2) and
    (N, 64, H/4, W/4): 32×32, 16×16 and 8×8 maps for CIFAR's 32×32 images. ``feature_info``
    lists them; ``forward_intermediates(x)`` returns them by name.
    """

    def __init__(self, *, depth: int, num_classes: int = 10, in_chans: int = 3, shortcut: str = "identity"):
        super().__init__()
        n = blocks_per_stage(depth)
        if shortcut not in SHORTCUTS:
            raise ValueError(f"shortcut must be one of {SHORTCUTS} ('identity' is the paper's option A, "
                             f"'projection' option B, 'none' the plain net), got {shortcut!r}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"num_classes must be an int >= 0, got {num_classes!r}")
        if isinstance(in_chans, bool) or not isinstance(in_chans, int) or in_chans < 1:
            raise ValueError(f"in_chans must be an int >= 1, got {in_chans!r}")
        self.depth, self.shortcut = depth, shortcut
        self.num_classes, self.in_chans = num_classes, in_chans
        self.num_features = STAGE_WIDTHS[-1]

        # The first layer: 3×3 convolution, 16 filters.
        self.conv1 = conv3x3(in_chans, STAGE_WIDTHS[0])
        self.bn1 = nn.BatchNorm2d(STAGE_WIDTHS[0])
        self.relu = nn.ReLU(inplace=True)

        # Three stages of n blocks (2n layers each); stages 2 and 3 halve the map in their first block.
        self.feature_info: list[dict] = []
        in_chs, reduction = STAGE_WIDTHS[0], 1
        for index, (name, planes) in enumerate(zip(STAGE_NAMES, STAGE_WIDTHS)):
            stride = 1 if index == 0 else 2
            reduction *= stride
            blocks = [make_block(in_chs, planes, stride, shortcut)]
            blocks += [make_block(planes, planes, 1, shortcut) for _ in range(1, n)]
            self.add_module(name, nn.Sequential(*blocks))
            self.feature_info.append({"name": name, "num_chs": planes, "reduction": reduction})
            in_chs = planes
        self.output_stride = reduction

        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc: nn.Module = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")  # std sqrt(2 / fan_out)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def _model_name(self) -> str:
        return getattr(self, "canon_name", type(self).__name__)  # set by canon.create_model

    def _check(self, x: torch.Tensor) -> None:
        # The smallest input whose 8×8-stage map still covers at least one real pixel.
        check_image_input(x, in_chans=self.in_chans, min_size=self.output_stride, model_name=self._model_name)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn1(self.conv1(x)))  # (N, 16, H, W)

    def forward_intermediates(self, x: torch.Tensor, names: Sequence[str] = STAGE_NAMES) -> dict[str, torch.Tensor]:
        """The outputs of the named stages, in order; only the stages up to the last one asked for run."""
        unknown = [n for n in names if n not in STAGE_NAMES]
        if unknown or not names:
            raise ValueError(f"names must be a non-empty subset of {STAGE_NAMES}, got {tuple(names)!r}")
        self._check(x)
        x = self.stem(x)
        out = {}
        last = max(STAGE_NAMES.index(n) for n in names)
        for name in STAGE_NAMES[:last + 1]:
            x = getattr(self, name)(x)
            if name in names:
                out[name] = x
        return out

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.layer1(x)  # (N, 16, 32, 32) for a 32×32 input
        x = self.layer2(x)  # (N, 32, 16, 16)
        return self.layer3(x)  # (N, 64, 8, 8)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(self.avgpool(x), 1)  # (N, 64): global average pooling
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh linear head with ``num_classes`` outputs (0: identity, pooled features)."""
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"num_classes must be an int >= 0, got {num_classes!r}")
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()


# ----------------------------------------------------------------------------- registered names
_REG = dict(task="classification", paper=PAPER, input_size=(3, 32, 32), num_classes=10)


@register_model(CifarResNet, **_REG)
def resnet20_cifar(**kwargs) -> CifarResNet:
    return CifarResNet(depth=20, **kwargs)


@register_model(CifarResNet, **_REG)
def resnet32_cifar(**kwargs) -> CifarResNet:
    return CifarResNet(depth=32, **kwargs)


@register_model(CifarResNet, **_REG)
def resnet44_cifar(**kwargs) -> CifarResNet:
    return CifarResNet(depth=44, **kwargs)


@register_model(CifarResNet, **_REG)
def resnet56_cifar(**kwargs) -> CifarResNet:
    return CifarResNet(depth=56, **kwargs)


@register_model(CifarResNet, **_REG)
def resnet110_cifar(**kwargs) -> CifarResNet:
    return CifarResNet(depth=110, **kwargs)


@register_model(CifarResNet, **_REG)
def plain20_cifar(**kwargs) -> CifarResNet:
    return CifarResNet(depth=20, shortcut="none", **kwargs)


@register_model(CifarResNet, **_REG)
def plain32_cifar(**kwargs) -> CifarResNet:
    return CifarResNet(depth=32, shortcut="none", **kwargs)


@register_model(CifarResNet, **_REG)
def plain44_cifar(**kwargs) -> CifarResNet:
    return CifarResNet(depth=44, shortcut="none", **kwargs)


@register_model(CifarResNet, **_REG)
def plain56_cifar(**kwargs) -> CifarResNet:
    return CifarResNet(depth=56, shortcut="none", **kwargs)


@register_model(CifarResNet, **_REG)
def plain110_cifar(**kwargs) -> CifarResNet:
    return CifarResNet(depth=110, shortcut="none", **kwargs)
