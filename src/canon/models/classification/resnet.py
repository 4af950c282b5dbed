"""ResNet, with its ResNeXt and wide-ResNet widenings.

Papers:
    "Deep Residual Learning for Image Recognition", He, Zhang, Ren, Sun, 2015, arXiv:1512.03385.
    "Aggregated Residual Transformations for Deep Neural Networks" (ResNeXt), Xie et al., 2016,
    arXiv:1611.05431.
    "Wide Residual Networks", Zagoruyko and Komodakis, 2016, arXiv:1605.07146.

Follows the paper:
    - Table 1: a 7×7/2 stem convolution and a 3×3/2 max-pool, then four stages (conv2_x..conv5_x,
      here ``layer1``..``layer4``) of 64, 128, 256 and 512 base channels; stages 2-4 halve the
      resolution in their first block; global average pooling and one fully connected layer.
    - BasicBlock (two 3×3 convolutions) for 18/34 layers, Bottleneck (1×1 reduce, 3×3, 1×1
      expand ×4) for 50/101/152 layers; batch normalisation after every convolution and ReLU
      after the addition.
    - Projection shortcuts (option B): a 1×1 convolution plus BN only where the shape changes,
      identity otherwise.
    - ResNeXt: the bottleneck's 3×3 convolution is grouped (cardinality ``groups``) and its width
      is ``int(planes * width_per_group / 64) * groups``; wide ResNet doubles that width.

Deviates, and why:
    - "ResNet V1.5", as torchvision: a Bottleneck that downsamples puts its stride on the 3×3
      convolution, not on the first 1×1 as the paper does. It is more accurate and it is the layout
      of every torchvision checkpoint.
    - ``zero_init_residual`` (Goyal et al. 2017, arXiv:1706.02677) sets the last BN scale of each
      residual branch to zero, so every block starts as an identity. Off by default, as torchvision.
    - ``replace_stride_with_dilation`` / ``output_stride`` (DeepLab, arXiv:1606.00915) trade a
      stage's stride for dilation to keep a denser last feature map for segmentation. torchvision's
      semantics: the first block of a dilated stage still runs at the previous dilation. Unlike
      torchvision, BasicBlock accepts dilation too (both its 3×3 convolutions use it); this changes
      no parameter.
    - ``small_input=True`` swaps the stem for a 3×3/1 convolution without the max-pool, the
      common form for 28-32 px images (the paper's own CIFAR nets are a different, narrower design).

Layout: every registered name has torchvision's ``state_dict`` keys and shapes (with the default
stem), so its checkpoints load with ``strict=True`` and give the same logits.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn as nn

from canon.models._validate import check_image_input
from canon.registry import register_model

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "resnet18", "resnet34", "resnet50", "resnet101",
           "resnet152", "resnext50_32x4d", "wide_resnet50_2"]

PAPER = "Deep Residual Learning for Image Recognition, 2015, arXiv:1512.03385"
PAPER_RESNEXT = "Aggregated Residual Transformations for Deep Neural Networks, 2016, arXiv:1611.05431"
PAPER_WIDE = "Wide Residual Networks, 2016, arXiv:1605.07146"

STAGE_NAMES = ("layer1", "layer2", "layer3", "layer4")


def conv3x3(in_chs: int, out_chs: int, stride: int = 1, groups: int = 1, dilation: int = 1) -> nn.Conv2d:
    """3×3 convolution without bias whose padding keeps the size at stride 1 for any dilation."""
    return nn.Conv2d(in_chs, out_chs, kernel_size=3, stride=stride, padding=dilation,
                     groups=groups, dilation=dilation, bias=False)


def conv1x1(in_chs: int, out_chs: int, stride: int = 1) -> nn.Conv2d:
    """1×1 convolution without bias (the bottleneck's reduce/expand and the projection shortcut)."""
    return nn.Conv2d(in_chs, out_chs, kernel_size=1, stride=stride, bias=False)


def dilation_from_output_stride(output_stride: int, stem_stride: int) -> tuple[bool, bool, bool]:
    """Which of stages 2-4 trade their stride for dilation to reach ``output_stride``.

    ``stem_stride`` is the stem's reduction (4 for the ImageNet stem, 1 for ``small_input``);
    without dilation the network reduces by ``stem_stride * 8``.
    """
    natural = stem_stride * 8
    options = {natural: (False, False, False), natural // 2: (False, False, True),
               natural // 4: (False, True, True), natural // 8: (True, True, True)}
    if output_stride not in options:
        raise ValueError(f"output_stride must be one of {sorted(options, reverse=True)} for this stem, "
                         f"got {output_stride!r}")
    return options[output_stride]


class BasicBlock(nn.Module):
    """Two 3×3 convolutions plus the shortcut: the block of ResNet-18/34 (paper Fig. 2)."""

    expansion = 1

    def __init__(self, in_chs: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 groups: int = 1, width_per_group: int = 64, dilation: int = 1,
                 norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d):
        super().__init__()
        if groups != 1 or width_per_group != 64:
            raise ValueError(f"BasicBlock supports only groups=1 and width_per_group=64, got groups={groups} "
                             f"and width_per_group={width_per_group}; use a Bottleneck model (resnet50 and up)")
        self.conv1 = conv3x3(in_chs, planes, stride, dilation=dilation)
        self.bn1 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes, dilation=dilation)
        self.bn2 = norm_layer(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + shortcut)  # y = F(x) + W_s x, then ReLU


class Bottleneck(nn.Module):
    """1×1 reduce, 3×3 (grouped for ResNeXt, strided in V1.5), 1×1 expand ×4, plus the shortcut."""

    expansion = 4

    def __init__(self, in_chs: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 groups: int = 1, width_per_group: int = 64, dilation: int = 1,
                 norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d):
        super().__init__()
        width = int(planes * (width_per_group / 64.0)) * groups
        out_chs = planes * self.expansion
        self.conv1 = conv1x1(in_chs, width)
        self.bn1 = norm_layer(width)
        self.conv2 = conv3x3(width, width, stride, groups, dilation)
        self.bn2 = norm_layer(width)
        self.conv3 = conv1x1(width, out_chs)
        self.bn3 = norm_layer(out_chs)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + shortcut)


class ResNet(nn.Module):
    """ResNet-style classifier: stem, four residual stages, global average pool, linear head.

    Args:
        block: ``BasicBlock`` or ``Bottleneck``.
        layers: blocks per stage, e.g. (3, 4, 6, 3) for ResNet-50.
        num_classes: classifier outputs; 0 leaves the head an identity (pooled features).
        in_chans: input image channels.
        zero_init_residual: start each residual branch's last BN scale at zero.
        groups, width_per_group: ResNeXt cardinality and per-group width (Bottleneck only).
        replace_stride_with_dilation: three booleans for stages 2, 3, 4 (torchvision semantics).
        output_stride: the same choice given as the total reduction (e.g. 8, 16 or 32 with the
            ImageNet stem); give this or ``replace_stride_with_dilation``, not both.
        small_input: 3×3/1 stem and no max-pool, for 28-32 px images.
        norm_layer: normalisation constructor taking the channel count (default BatchNorm2d).

    Intermediate features: ``feature_info`` lists, per stage, its name, channels and reduction;
    ``forward_intermediates(x)`` returns ``{"layer1": ..., ..., "layer4": ...}``.
    """

    def __init__(self, *, block: type[BasicBlock] | type[Bottleneck], layers: Sequence[int],
                 num_classes: int = 1000, in_chans: int = 3, zero_init_residual: bool = False,
                 groups: int = 1, width_per_group: int = 64,
                 replace_stride_with_dilation: Sequence[bool] | None = None,
                 output_stride: int | None = None, small_input: bool = False,
                 norm_layer: Callable[[int], nn.Module] | None = None):
        super().__init__()
        if block not in (BasicBlock, Bottleneck):
            raise TypeError(f"block must be BasicBlock or Bottleneck, got {block!r}")
        if len(layers) != 4 or any(not isinstance(n, int) or n < 1 for n in layers):
            raise ValueError(f"layers must be four positive block counts, got {tuple(layers)!r}")
        if not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"num_classes must be an int >= 0, got {num_classes!r}")
        if not isinstance(in_chans, int) or in_chans < 1:
            raise ValueError(f"in_chans must be an int >= 1, got {in_chans!r}")
        stem_stride = 1 if small_input else 4
        if output_stride is not None:
            if replace_stride_with_dilation is not None:
                raise ValueError("give output_stride or replace_stride_with_dilation, not both "
                                 f"(got {output_stride!r} and {replace_stride_with_dilation!r})")
            replace_stride_with_dilation = dilation_from_output_stride(output_stride, stem_stride)
        if replace_stride_with_dilation is None:
            replace_stride_with_dilation = (False, False, False)
        if len(replace_stride_with_dilation) != 3:
            raise ValueError("replace_stride_with_dilation must be None or three booleans (stages 2, 3, 4), "
                             f"got {replace_stride_with_dilation!r}")
        norm_layer = norm_layer or nn.BatchNorm2d
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.small_input = small_input
        self.num_features = 512 * block.expansion

        # Stem: conv1 of Table 1.
        if small_input:
            self.conv1 = nn.Conv2d(in_chans, 64, kernel_size=3, stride=1, padding=1, bias=False)
            self.maxpool: nn.Module = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.bn1 = norm_layer(64)
        self.relu = nn.ReLU(inplace=True)

        # Stages conv2_x .. conv5_x. ``in_chs``, ``dilation`` and ``reduction`` run along them.
        self.feature_info: list[dict] = []
        in_chs, dilation, reduction = 64, 1, stem_stride
        for index, (name, planes, num_blocks) in enumerate(zip(STAGE_NAMES, (64, 128, 256, 512), layers)):
            stride = 1 if index == 0 else 2
            previous_dilation = dilation
            if index > 0 and replace_stride_with_dilation[index - 1]:
                dilation, stride = dilation * stride, 1
            reduction *= stride
            out_chs = planes * block.expansion
            downsample = None
            if stride != 1 or in_chs != out_chs:
                downsample = nn.Sequential(conv1x1(in_chs, out_chs, stride), norm_layer(out_chs))
            blocks = [block(in_chs, planes, stride, downsample, groups, width_per_group,
                            previous_dilation, norm_layer)]
            blocks += [block(out_chs, planes, 1, None, groups, width_per_group, dilation, norm_layer)
                       for _ in range(1, num_blocks)]
            self.add_module(name, nn.Sequential(*blocks))
            self.feature_info.append({"name": name, "num_chs": out_chs, "reduction": reduction})
            in_chs = out_chs
        self.output_stride = reduction

        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc: nn.Module = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                last_bn = m.bn3 if isinstance(m, Bottleneck) else m.bn2 if isinstance(m, BasicBlock) else None
                if last_bn is not None and getattr(last_bn, "weight", None) is not None:
                    nn.init.zeros_(last_bn.weight)

    @property
    def _model_name(self) -> str:
        return getattr(self, "canon_name", type(self).__name__)  # set by canon.create_model

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (N, 64, H/4, W/4)

    def forward_intermediates(self, x: torch.Tensor, names: Sequence[str] = STAGE_NAMES) -> dict[str, torch.Tensor]:
        """The outputs of the named stages, in order, e.g. ``{"layer3": ..., "layer4": ...}``.

        Only the stages up to the last one asked for are run.
        """
        unknown = [n for n in names if n not in STAGE_NAMES]
        if unknown or not names:
            raise ValueError(f"names must be a non-empty subset of {STAGE_NAMES}, got {tuple(names)!r}")
        check_image_input(x, in_chans=self.in_chans, min_size=self.output_stride, model_name=self._model_name)
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
        x = self.layer1(x)  # (N, 64·e, H/4, W/4)
        x = self.layer2(x)  # (N, 128·e, H/8, W/8)
        x = self.layer3(x)  # (N, 256·e, H/16, W/16)
        return self.layer4(x)  # (N, 512·e, H/32, W/32), e = block.expansion

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(self.avgpool(x), 1)  # (N, 512·e)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The smallest input whose last feature map still covers at least one real pixel.
        check_image_input(x, in_chans=self.in_chans, min_size=self.output_stride, model_name=self._model_name)
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh linear head with ``num_classes`` outputs (0: identity, pooled features)."""
        if not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"num_classes must be an int >= 0, got {num_classes!r}")
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()


# ----------------------------------------------------------------------------- registered names
_REG = dict(task="classification", input_size=(3, 224, 224), compatible_with="torchvision")


@register_model(ResNet, paper=PAPER, **_REG)
def resnet18(**kwargs) -> ResNet:
    return ResNet(block=BasicBlock, layers=(2, 2, 2, 2), **kwargs)


@register_model(ResNet, paper=PAPER, **_REG)
def resnet34(**kwargs) -> ResNet:
    return ResNet(block=BasicBlock, layers=(3, 4, 6, 3), **kwargs)


@register_model(ResNet, paper=PAPER, **_REG)
def resnet50(**kwargs) -> ResNet:
    return ResNet(block=Bottleneck, layers=(3, 4, 6, 3), **kwargs)


@register_model(ResNet, paper=PAPER, **_REG)
def resnet101(**kwargs) -> ResNet:
    return ResNet(block=Bottleneck, layers=(3, 4, 23, 3), **kwargs)


@register_model(ResNet, paper=PAPER, **_REG)
def resnet152(**kwargs) -> ResNet:
    return ResNet(block=Bottleneck, layers=(3, 8, 36, 3), **kwargs)


@register_model(ResNet, paper=PAPER_RESNEXT, **_REG)
def resnext50_32x4d(**kwargs) -> ResNet:
    return ResNet(block=Bottleneck, layers=(3, 4, 6, 3), groups=32, width_per_group=4, **kwargs)


@register_model(ResNet, paper=PAPER_WIDE, **_REG)
def wide_resnet50_2(**kwargs) -> ResNet:
    return ResNet(block=Bottleneck, layers=(3, 4, 6, 3), width_per_group=64 * 2, **kwargs)
