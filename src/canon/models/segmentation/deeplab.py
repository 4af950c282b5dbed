"""DeepLab v1, v2 and v3: atrous convolution, a large field of view, and atrous spatial pyramid pooling.

* v1: L.-C. Chen, G. Papandreou, I. Kokkinos, K. Murphy, A. L. Yuille, "Semantic Image Segmentation
  with Deep Convolutional Nets and Fully Connected CRFs", ICLR 2015, arXiv:1412.7062.
* v2: the same authors, "DeepLab: Semantic Image Segmentation with Deep Convolutional Nets, Atrous
  Convolution, and Fully Connected CRFs", TPAMI 2017, arXiv:1606.00915.
* v3: L.-C. Chen, G. Papandreou, F. Schroff, H. Adam, "Rethinking Atrous Convolution for Semantic
  Image Segmentation", 2017, arXiv:1706.05587.

Follows the papers:
* v1 ``deeplabv1_largefov``: VGG-16 whose pool4 and pool5 keep the resolution (3x3, stride 1) and whose
  conv5 layers are atrous with rate 2; fc6 becomes a 3x3 convolution with rate 12 and 1024 channels,
  fc7 a 1x1 with 1024 (the "DeepLab-LargeFOV" row of Table 2); output stride 8;
* v2 ``deeplabv2_resnet101``: ResNet-101 at output stride 8 and ASPP-L: four parallel 3x3 atrous
  branches at rates 6, 12, 18, 24, each straight to class logits, summed (Fig. 7);
* v3 ASPP (Sec. 3.3): a 1x1 convolution, three 3x3 atrous convolutions at rates (6, 12, 18) for
  output stride 16 -- doubled to (12, 24, 36) at output stride 8 -- and image-level pooling, each with
  256 channels and batch norm, concatenated and projected by a 1x1 convolution;
* logits are upsampled bilinearly to the input size; the poly schedule is ``--scheduler poly``.

Deviates, and why:
* the dense CRF of v1/v2 is left out (the issue does not require it);
* the ResNet backbones are torchvision's "V1.5" (stride on the 3x3 convolution) and v3 has
  torchvision's head (a 3x3 conv, BN, ReLU after the ASPP projection, dropout 0.5 in the projection),
  so ``deeplabv3_resnet50`` / ``deeplabv3_resnet101`` have torchvision's ``state_dict`` keys and shapes
  (39,638,869 parameters for deeplabv3_resnet50 at 21 classes without the auxiliary head);
* v1 and v2 are trained here on labels at full resolution (their papers downsample the labels by 8);
* ``deeplabv3_resnet18`` (not in the paper) is a small v3 for CPU training: ResNet-18, output
  stride 16, 128 ASPP channels.

Output: logits (N, num_classes, H, W); with ``aux_loss=True`` (ResNet models), ``{"out", "aux"}``.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from canon.models._validate import check_image_input
from canon.models.segmentation.fcn import SegmentationResNet
from canon.registry import register_model

__all__ = ["ASPP", "DeepLabV3Head", "DeepLabV3", "DeepLabV2", "DeepLabV1", "aspp_rates", "deeplabv1_largefov",
           "deeplabv2_resnet101", "deeplabv3_resnet18", "deeplabv3_resnet50", "deeplabv3_resnet101"]

PAPER_V1 = "Semantic Image Segmentation with Deep Convolutional Nets and Fully Connected CRFs (Chen et al., 2015, arXiv:1412.7062)"
PAPER_V2 = "DeepLab: Semantic Image Segmentation with ... Atrous Convolution, and Fully Connected CRFs (Chen et al., 2017, arXiv:1606.00915)"
PAPER_V3 = "Rethinking Atrous Convolution for Semantic Image Segmentation (Chen et al., 2017, arXiv:1706.05587)"


def aspp_rates(output_stride: int) -> tuple[int, int, int]:
    """v3's atrous rates: (6, 12, 18) at output stride 16, doubled at 8 (Sec. 3.3)."""
    if output_stride not in (8, 16):
        raise ValueError(f"DeepLab v3 output_stride must be 8 or 16, got {output_stride!r}")
    return (6, 12, 18) if output_stride == 16 else (12, 24, 36)


# --------------------------------------------------------------------------- v1: VGG-16 LargeFOV
class DeepLabV1(nn.Module):
    """DeepLab-LargeFOV on VGG-16 (output stride 8)."""

    def __init__(self, *, num_classes: int = 21, in_chans: int = 3, fc_channels: int = 1024, fc6_dilation: int = 12,
                 dropout: float = 0.5):
        super().__init__()
        self.num_classes, self.in_chans = num_classes, in_chans
        layers: list[nn.Module] = []
        channels = in_chans
        # (channels of each 3x3 conv, dilation) per VGG-16 block, then the pool after it.
        blocks = [((64, 64), 1, 2), ((128, 128), 1, 2), ((256, 256, 256), 1, 2), ((512, 512, 512), 1, 1),
                  ((512, 512, 512), 2, 1)]
        for widths, dilation, pool_stride in blocks:
            for width in widths:
                layers += [nn.Conv2d(channels, width, 3, padding=dilation, dilation=dilation), nn.ReLU(inplace=True)]
                channels = width
            layers.append(nn.MaxPool2d(3, stride=pool_stride, padding=1))  # 3x3 pools, as the paper's Caffe model
        self.features = nn.Sequential(*layers)  # (N, 512, H/8, W/8)
        self.fc6 = nn.Conv2d(512, fc_channels, 3, padding=fc6_dilation, dilation=fc6_dilation)
        self.fc7 = nn.Conv2d(fc_channels, fc_channels, 1)
        self.drop = nn.Dropout2d(dropout)
        self.fc8 = nn.Conv2d(fc_channels, num_classes, 1)
        nn.init.normal_(self.fc8.weight, std=0.01), nn.init.zeros_(self.fc8.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image_input(x, in_chans=self.in_chans, min_size=8, model_name="deeplabv1_largefov")
        h = self.features(x)
        h = self.drop(F.relu(self.fc6(h)))  # (N, 1024, H/8, W/8)
        h = self.drop(F.relu(self.fc7(h)))
        return F.interpolate(self.fc8(h), size=x.shape[-2:], mode="bilinear", align_corners=False)


# --------------------------------------------------------------------------- v2: ASPP-L, summed
class ASPPSum(nn.Module):
    """v2's ASPP: parallel 3x3 atrous convolutions straight to logits, summed."""

    def __init__(self, in_chs: int, num_classes: int, rates: Sequence[int] = (6, 12, 18, 24)):
        super().__init__()
        self.branches = nn.ModuleList([nn.Conv2d(in_chs, num_classes, 3, padding=r, dilation=r) for r in rates])
        for conv in self.branches:
            nn.init.normal_(conv.weight, std=0.01), nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(branch(x) for branch in self.branches)  # (N, K, h, w)


class DeepLabV2(SegmentationResNet):
    """DeepLab v2: dilated ResNet + ASPP whose branch logits are summed."""

    def __init__(self, *, depth: int = 101, num_classes: int = 21, in_chans: int = 3, output_stride: int = 8,
                 rates: Sequence[int] = (6, 12, 18, 24), aux_loss: bool = False):
        super().__init__()
        layer4_chs = self._build_backbone(depth, in_chans, output_stride, num_classes, aux_loss)
        self.classifier = ASPPSum(layer4_chs, num_classes, rates)


# --------------------------------------------------------------------------- v3: ASPP with image pooling
def _conv_bn_relu(in_chs: int, out_chs: int, kernel: int = 1, dilation: int = 1) -> list[nn.Module]:
    pad = dilation if kernel == 3 else 0
    return [nn.Conv2d(in_chs, out_chs, kernel, padding=pad, dilation=dilation, bias=False),
            nn.BatchNorm2d(out_chs), nn.ReLU()]


class ASPPPooling(nn.Sequential):
    """Image-level features: global average pool, 1x1 conv + BN + ReLU, upsampled back."""

    def __init__(self, in_chs: int, out_chs: int):
        super().__init__(nn.AdaptiveAvgPool2d(1), *_conv_bn_relu(in_chs, out_chs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        return F.interpolate(super().forward(x), size=size, mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """v3's ASPP: [1x1, three 3x3 atrous, image pooling] -> concat (5 x out) -> 1x1 projection."""

    def __init__(self, in_chs: int, rates: Sequence[int], out_chs: int = 256, dropout: float = 0.5):
        super().__init__()
        branches = [nn.Sequential(*_conv_bn_relu(in_chs, out_chs))]
        branches += [nn.Sequential(*_conv_bn_relu(in_chs, out_chs, 3, r)) for r in rates]
        branches.append(ASPPPooling(in_chs, out_chs))
        self.convs = nn.ModuleList(branches)
        self.project = nn.Sequential(*_conv_bn_relu(len(branches) * out_chs, out_chs), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([branch(x) for branch in self.convs], dim=1))  # (N, out, h, w)


class DeepLabV3Head(nn.Sequential):
    """ASPP, then 3x3 conv + BN + ReLU, then 1x1 to class logits (torchvision's layout)."""

    def __init__(self, in_chs: int, num_classes: int, rates: Sequence[int], channels: int = 256):
        super().__init__(ASPP(in_chs, rates, channels), *_conv_bn_relu(channels, channels, 3),
                         nn.Conv2d(channels, num_classes, 1))


class DeepLabV3(SegmentationResNet):
    """DeepLab v3: dilated ResNet (output stride 8 or 16) + ASPP head (+ optional FCN aux head)."""

    def __init__(self, *, depth: int = 50, num_classes: int = 21, in_chans: int = 3, output_stride: int = 8,
                 aux_loss: bool = False, aspp_channels: int = 256):
        super().__init__()
        rates = aspp_rates(output_stride)
        layer4_chs = self._build_backbone(depth, in_chans, output_stride, num_classes, aux_loss)
        self.classifier = DeepLabV3Head(layer4_chs, num_classes, rates, aspp_channels)


_VOC = dict(task="segmentation", input_size=(3, 513, 513), num_classes=21)


@register_model(DeepLabV1, paper=PAPER_V1, **_VOC)
def deeplabv1_largefov(**kwargs) -> DeepLabV1:
    return DeepLabV1(**kwargs)


@register_model(DeepLabV2, paper=PAPER_V2, **_VOC)
def deeplabv2_resnet101(**kwargs) -> DeepLabV2:
    return DeepLabV2(**{"depth": 101, **kwargs})


@register_model(DeepLabV3, paper=PAPER_V3, task="segmentation", input_size=(3, 256, 256), num_classes=21)
def deeplabv3_resnet18(**kwargs) -> DeepLabV3:
    return DeepLabV3(**{"depth": 18, "output_stride": 16, "aspp_channels": 128, **kwargs})


@register_model(DeepLabV3, paper=PAPER_V3, compatible_with="torchvision", **_VOC)
def deeplabv3_resnet50(**kwargs) -> DeepLabV3:
    return DeepLabV3(**{"depth": 50, **kwargs})


@register_model(DeepLabV3, paper=PAPER_V3, compatible_with="torchvision", **_VOC)
def deeplabv3_resnet101(**kwargs) -> DeepLabV3:
    return DeepLabV3(**{"depth": 101, **kwargs})
