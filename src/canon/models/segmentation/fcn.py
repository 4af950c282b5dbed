"""Fully convolutional networks: a classifier made convolutional, with learned upsampling and skips.

J. Long, E. Shelhamer, T. Darrell, "Fully Convolutional Networks for Semantic Segmentation",
CVPR 2015, arXiv:1411.4038.

Follows the paper:
* VGG-16's fully connected layers become convolutions: fc6 a 7x7 convolution with 4096 channels,
  fc7 a 1x1 convolution with 4096 channels (each with ReLU and dropout 0.5), then a 1x1 ``score_fr``;
* the first convolution pads by 100 pixels so that any input survives the five poolings and the
  7x7 fc6, and every upsampled map is cropped back to the input, with the offsets of the authors'
  Caffe prototxts (32s: 19; 16s: 5 then 27; 8s: 5, 9 then 31);
* upsampling by transposed convolutions initialised to bilinear interpolation (Sec. 3.3) and
  learned (``upscore2``, ``upscore_pool4``); skips from pool4 (FCN-16s) and pool3 (FCN-8s) through
  1x1 scoring layers, fused by summation (Sec. 4.2);
* the scoring layers of the skips start at zero (Sec. 4.2: "initialized to zero" for the new layers).

Deviates, and why:
* the final 32x/16x/8x upsamplers are also learned (the paper fixes the last one to bilinear);
  they start bilinear, so the initial network is the paper's;
* ``fcn_resnet50`` / ``fcn_resnet101`` follow torchvision, not the paper: a dilated ResNet
  (output stride 8) with a 3x3 conv head (``FCNHead``) and bilinear upsampling.

Layouts: ``fcn32s_vgg16`` / ``fcn16s_vgg16`` / ``fcn8s_vgg16`` keep VGG-16's ``features.N`` keys (the
ImageNet convolutions load into them); ``fcn_resnet50`` / ``fcn_resnet101`` have torchvision's
``state_dict`` keys and shapes (``backbone.*``, ``classifier.*``, and ``aux_classifier.*`` with
``aux_loss=True``; 32,957,013 parameters for fcn_resnet50 at 21 classes without the auxiliary head).
Output: logits (N, num_classes, H, W); with ``aux_loss=True``, ``{"out": ..., "aux": ...}``.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from canon.models._validate import check_image_input
from canon.registry import register_model

__all__ = ["FCN", "FCNHead", "FCNResNet", "bilinear_kernel", "resnet_backbone", "fcn32s_vgg16", "fcn16s_vgg16",
           "fcn8s_vgg16", "fcn_resnet50", "fcn_resnet101"]

PAPER = "Fully Convolutional Networks for Semantic Segmentation (Long et al., 2015, arXiv:1411.4038)"
# Indices of VGG-16's features Sequential (conv, ReLU, pool layout of torchvision's vgg16).
POOL3, POOL4, POOL5 = 16, 23, 30
CROPS = {32: (19,), 16: (5, 27), 8: (5, 9, 31)}  # Caffe crop offsets of the authors' prototxts


def bilinear_kernel(in_chs: int, out_chs: int, size: int) -> torch.Tensor:
    """Weights (in_chs, out_chs, size, size) of a transposed convolution that upsamples each
    channel bilinearly by ``stride = size // 2`` (channel i to channel i, zero elsewhere)."""
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    og = torch.arange(size, dtype=torch.float64)
    filt = (1 - (og - center).abs() / factor)
    kernel = filt[:, None] * filt[None, :]  # (size, size)
    weight = torch.zeros(in_chs, out_chs, size, size, dtype=torch.float64)
    for i in range(min(in_chs, out_chs)):
        weight[i, i] = kernel
    return weight.float()


def _upsampler(channels: int, factor: int) -> nn.ConvTranspose2d:
    up = nn.ConvTranspose2d(channels, channels, kernel_size=2 * factor, stride=factor, bias=False)
    with torch.no_grad():
        up.weight.copy_(bilinear_kernel(channels, channels, 2 * factor))
    return up


def _crop(x: torch.Tensor, offset: int, like: torch.Tensor) -> torch.Tensor:
    h, w = like.shape[-2:]
    return x[..., offset:offset + h, offset:offset + w]


class FCN(nn.Module):
    """FCN-32s / 16s / 8s on VGG-16 (``stride`` 32, 16 or 8)."""

    def __init__(self, *, stride: int = 8, num_classes: int = 21, in_chans: int = 3, dropout: float = 0.5):
        super().__init__()
        if stride not in CROPS:
            raise ValueError(f"stride must be 32, 16 or 8 (FCN-32s/16s/8s), got {stride!r}")
        from canon.models.classification.vgg import VGG_CONFIGS, make_vgg_features

        self.stride, self.num_classes, self.in_chans = stride, num_classes, in_chans
        self.features = make_vgg_features(VGG_CONFIGS["D"], in_chans=in_chans)
        self.features[0].padding = (100, 100)  # conv1_1 pad 100
        for m in self.features:
            if isinstance(m, nn.MaxPool2d):
                m.ceil_mode = True  # Caffe pooling rounds up
        self.fc6 = nn.Conv2d(512, 4096, kernel_size=7)  # fc6 as a 7x7 convolution
        self.fc7 = nn.Conv2d(4096, 4096, kernel_size=1)
        self.drop = nn.Dropout2d(dropout)
        self.score_fr = nn.Conv2d(4096, num_classes, kernel_size=1)
        if stride == 32:
            self.upscore = _upsampler(num_classes, 32)
        else:
            self.upscore2 = _upsampler(num_classes, 2)
            self.score_pool4 = nn.Conv2d(512, num_classes, kernel_size=1)
            nn.init.zeros_(self.score_pool4.weight), nn.init.zeros_(self.score_pool4.bias)
            if stride == 16:
                self.upscore16 = _upsampler(num_classes, 16)
            else:
                self.upscore_pool4 = _upsampler(num_classes, 2)
                self.score_pool3 = nn.Conv2d(256, num_classes, kernel_size=1)
                nn.init.zeros_(self.score_pool3.weight), nn.init.zeros_(self.score_pool3.bias)
                self.upscore8 = _upsampler(num_classes, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image_input(x, in_chans=self.in_chans, min_size=1, model_name=f"fcn{self.stride}s_vgg16")
        h = x
        pools = {}
        for index, layer in enumerate(self.features):
            h = layer(h)
            if index in (POOL3, POOL4):
                pools[index] = h  # pool3 (N, 256, ...), pool4 (N, 512, ...)
        h = self.drop(F.relu(self.fc6(h)))  # (N, 4096, h5 - 6, w5 - 6)
        h = self.drop(F.relu(self.fc7(h)))
        h = self.score_fr(h)  # (N, K, ., .)
        if self.stride == 32:
            return _crop(self.upscore(h), CROPS[32][0], x)
        h = self.upscore2(h)  # x2
        h = h + _crop(self.score_pool4(pools[POOL4]), CROPS[self.stride][0], h)
        if self.stride == 16:
            return _crop(self.upscore16(h), CROPS[16][1], x)
        h = self.upscore_pool4(h)  # x2
        h = h + _crop(self.score_pool3(pools[POOL3]), CROPS[8][1], h)
        return _crop(self.upscore8(h), CROPS[8][2], x)  # (N, K, H, W)


# --------------------------------------------------------------------------- torchvision's FCN-ResNet
class FCNHead(nn.Sequential):
    """torchvision's FCN head: 3x3 conv to in/4 channels, BN, ReLU, dropout 0.1, 1x1 to classes."""

    def __init__(self, in_chs: int, num_classes: int):
        inter = in_chs // 4
        super().__init__(nn.Conv2d(in_chs, inter, 3, padding=1, bias=False), nn.BatchNorm2d(inter), nn.ReLU(),
                         nn.Dropout(0.1), nn.Conv2d(inter, num_classes, 1))


def resnet_backbone(depth: int, *, in_chans: int, output_stride: int) -> nn.Module:
    """canon's ResNet-``depth`` without its classifier, dilated to ``output_stride`` (8, 16 or 32)."""
    from canon.models.classification import resnet as R

    constructors = {18: R.resnet18, 34: R.resnet34, 50: R.resnet50, 101: R.resnet101, 152: R.resnet152}
    if depth not in constructors:
        raise ValueError(f"backbone depth must be one of {sorted(constructors)}, got {depth!r}")
    if output_stride not in (8, 16, 32):
        raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride!r}")
    return constructors[depth](num_classes=0, in_chans=in_chans, output_stride=output_stride)


class SegmentationResNet(nn.Module):
    """A dilated ResNet backbone, a head on layer4 and an optional auxiliary FCN head on layer3,
    both upsampled bilinearly to the input size (torchvision's ``_SimpleSegmentationModel``)."""

    def _build_backbone(self, depth: int, in_chans: int, output_stride: int, num_classes: int, aux_loss: bool):
        self.num_classes, self.in_chans, self.output_stride = num_classes, in_chans, output_stride
        self.backbone = resnet_backbone(depth, in_chans=in_chans, output_stride=output_stride)
        layer3_chs, layer4_chs = (self.backbone.feature_info[i]["num_chs"] for i in (2, 3))
        self.aux_classifier = FCNHead(layer3_chs, num_classes) if aux_loss else None
        return layer4_chs

    def forward(self, x: torch.Tensor):
        check_image_input(x, in_chans=self.in_chans, min_size=self.output_stride,
                          model_name=getattr(self, "canon_name", type(self).__name__))
        size = x.shape[-2:]
        names = ("layer3", "layer4") if self.aux_classifier is not None else ("layer4",)
        features = self.backbone.forward_intermediates(x, names)
        out = F.interpolate(self.classifier(features["layer4"]), size=size, mode="bilinear", align_corners=False)
        if self.aux_classifier is None:
            return out  # (N, K, H, W)
        aux = F.interpolate(self.aux_classifier(features["layer3"]), size=size, mode="bilinear", align_corners=False)
        return {"out": out, "aux": aux}


class FCNResNet(SegmentationResNet):
    """torchvision's FCN: dilated ResNet (output stride 8) + FCNHead."""

    def __init__(self, *, depth: int = 50, num_classes: int = 21, in_chans: int = 3, aux_loss: bool = False,
                 output_stride: int = 8):
        super().__init__()
        layer4_chs = self._build_backbone(depth, in_chans, output_stride, num_classes, aux_loss)
        self.classifier = FCNHead(layer4_chs, num_classes)


_VOC = dict(task="segmentation", paper=PAPER, input_size=(3, 512, 512), num_classes=21)


@register_model(FCN, **_VOC)
def fcn32s_vgg16(**kwargs) -> FCN:
    return FCN(**{"stride": 32, **kwargs})


@register_model(FCN, **_VOC)
def fcn16s_vgg16(**kwargs) -> FCN:
    return FCN(**{"stride": 16, **kwargs})


@register_model(FCN, **_VOC)
def fcn8s_vgg16(**kwargs) -> FCN:
    return FCN(**{"stride": 8, **kwargs})


@register_model(FCNResNet, compatible_with="torchvision", **_VOC)
def fcn_resnet50(**kwargs) -> FCNResNet:
    return FCNResNet(**{"depth": 50, **kwargs})


@register_model(FCNResNet, compatible_with="torchvision", **_VOC)
def fcn_resnet101(**kwargs) -> FCNResNet:
    return FCNResNet(**{"depth": 101, **kwargs})
