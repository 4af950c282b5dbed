"""Detection backbones: frozen batch norm, a ResNet body that returns named features, and FPN.

Paper: Feature Pyramid Networks for Object Detection, Lin et al., 2017, arXiv:1612.03144.
RetinaNet's P6/P7 levels: Focal Loss for Dense Object Detection, Lin et al., 2017, arXiv:1708.02002.

Follows the paper:
    * A bottom-up pathway (ResNet stages C2..C5, strides 4..32), a top-down pathway that
      upsamples the coarser map by 2 (nearest neighbour) and adds a 1x1 lateral convolution of
      the bottom-up map, then a 3x3 convolution on every merged map to reduce the aliasing of
      the upsampling (Sec. 3); d = 256 channels everywhere; no non-linearities in the pyramid.
    * P6 for the RPN is a stride-2 subsampling of P5 (``LastLevelMaxPool``, Sec. 4.1), so the
      anchors run 32² .. 512² on P2 .. P6.
    * RetinaNet's P6 is a 3x3/2 convolution, P7 a ReLU and another 3x3/2 convolution
      (``LastLevelP6P7``).

Deviates, and why:
    * torchvision's layout, so its checkpoints load: the body is ``backbone.body`` (the ResNet's
      ``conv1``, ``bn1``, ``layer1``..``layer4``), returning ``{"0": C2, "1": C3, "2": C4,
      "3": C5}``; the FPN's convolutions sit in ``inner_blocks.{i}.0`` and ``layer_blocks.{i}.0``
      (version-2 key names; version-1 names ``inner_blocks.{i}.weight`` are remapped on load, as
      torchvision's own ``_load_from_state_dict`` does), and it names P6 ``"pool"``.
    * The FPN's convolutions start from Kaiming-uniform with a = 1 (torchvision's init).
    * ``FrozenBatchNorm2d`` is batch norm with fixed statistics and affine parameters, all
      buffers, not parameters, as in Detectron and torchvision: with the small per-GPU batches of
      detection the batch statistics are too noisy to train, so ImageNet's are kept. Its
      ``eps`` is added to the running variance inside the square root (torchvision's 1e-5);
      torchvision's v1 COCO detection checkpoints were trained with eps = 0, which
      ``set_frozen_batch_norm_eps(model, 0.0)`` restores (torchvision's ``overwrite_eps``).
    * ``trainable_layers`` freezes (``requires_grad=False``) the stem and the first stages, as
      torchvision's ``trainable_layers``: 5 trains everything, 3 (torchvision's default with
      ImageNet weights) trains ``layer2``..``layer4``, 0 trains no backbone layer.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from canon.models.classification import resnet as resnet_family

__all__ = ["FrozenBatchNorm2d", "set_frozen_batch_norm_eps", "resolve_norm_layer", "ResNetBody",
           "LastLevelMaxPool", "LastLevelP6P7", "FeaturePyramidNetwork", "BackboneWithFPN",
           "resnet_fpn_backbone", "RESNET_CONSTRUCTORS", "NORM_LAYERS"]

# The ResNet bodies a detection backbone can be built on (canon's torchvision-layout ResNets).
RESNET_CONSTRUCTORS = {
    "resnet18": resnet_family.resnet18, "resnet34": resnet_family.resnet34, "resnet50": resnet_family.resnet50,
    "resnet101": resnet_family.resnet101, "resnet152": resnet_family.resnet152,
    "resnext50_32x4d": resnet_family.resnext50_32x4d, "wide_resnet50_2": resnet_family.wide_resnet50_2,
}
STAGE_NAMES = ("layer1", "layer2", "layer3", "layer4")
# torchvision's order of freezing: the last ``trainable_layers`` of these train.
TRAINABLE_ORDER = ("layer4", "layer3", "layer2", "layer1", "conv1")


class FrozenBatchNorm2d(nn.Module):
    """Batch norm with fixed statistics: y = (x - mean) * weight / sqrt(var + eps) + bias (all buffers)."""

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        if not isinstance(num_features, int) or num_features < 1:
            raise ValueError(f"num_features must be a positive int, got {num_features!r}")
        self.num_features = num_features
        self.eps = float(eps)
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # A trained nn.BatchNorm2d's state_dict carries num_batches_tracked, which has no meaning here.
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def forward(self, x: Tensor) -> Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()  # gamma / sqrt(var + eps)
        shift = self.bias - self.running_mean * scale  # beta - mean * scale
        return x * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


def set_frozen_batch_norm_eps(model: nn.Module, eps: float) -> None:
    """Set ``eps`` of every FrozenBatchNorm2d in ``model`` (0.0 for torchvision's v1 COCO detection checkpoints)."""
    for module in model.modules():
        if isinstance(module, FrozenBatchNorm2d):
            module.eps = float(eps)


def _group_norm(num_channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups (Wu and He, 2018, arXiv:1803.08494), fewer where the channels do not divide."""
    groups = 32
    while num_channels % groups:
        groups //= 2
    return nn.GroupNorm(groups, num_channels)


NORM_LAYERS: dict[str, Callable[[int], nn.Module]] = {
    "frozen_batch_norm": FrozenBatchNorm2d, "batch_norm": nn.BatchNorm2d, "group_norm": _group_norm,
}


def resolve_norm_layer(norm_layer: str | Callable[[int], nn.Module]) -> Callable[[int], nn.Module]:
    """A normalisation constructor from one of ``NORM_LAYERS``' names, or the callable itself."""
    if callable(norm_layer):
        return norm_layer
    if norm_layer not in NORM_LAYERS:
        raise ValueError(f"norm_layer must be one of {sorted(NORM_LAYERS)} or a callable taking the channel "
                         f"count, got {norm_layer!r}")
    return NORM_LAYERS[norm_layer]


class ResNetBody(nn.Module):
    """A ResNet without its pooling and classifier, returning the named stage outputs.

    ``return_layers`` maps stage names to output names, e.g. ``{"layer1": "0", ..., "layer4": "3"}``;
    forward(x [N, C, H, W]) -> OrderedDict of those outputs, in stage order. ``out_channels``
    lists each output's channels, ``strides`` each output's reduction.
    """

    def __init__(self, resnet: resnet_family.ResNet, return_layers: dict[str, str]):
        super().__init__()
        unknown = [name for name in return_layers if name not in STAGE_NAMES]
        if unknown or not return_layers:
            raise ValueError(f"return_layers must map a non-empty subset of {STAGE_NAMES} to output names, "
                             f"got {return_layers!r}")
        last = max(STAGE_NAMES.index(name) for name in return_layers)
        # The stem and every stage up to the last one returned, under the ResNet's own names.
        for name in ("conv1", "bn1", "relu", "maxpool") + STAGE_NAMES[:last + 1]:
            self.add_module(name, getattr(resnet, name))
        self.return_layers = dict(sorted(return_layers.items(), key=lambda item: STAGE_NAMES.index(item[0])))
        info = {entry["name"]: entry for entry in resnet.feature_info}
        self.out_channels = [info[name]["num_chs"] for name in self.return_layers]
        self.strides = [info[name]["reduction"] for name in self.return_layers]
        self.in_chans = resnet.in_chans

    def forward(self, x: Tensor) -> "OrderedDict[str, Tensor]":
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"ResNetBody expects a batch (N, {self.in_chans}, H, W), got shape {tuple(x.shape)}")
        out: OrderedDict[str, Tensor] = OrderedDict()
        for name, module in self.named_children():
            x = module(x)
            if name in self.return_layers:
                out[self.return_layers[name]] = x
        return out


class LastLevelMaxPool(nn.Module):
    """The RPN's P6: max-pool P5 with kernel 1 and stride 2 (a subsampling), named "pool"."""

    def forward(self, results: list[Tensor], inputs: list[Tensor], names: list[str]) -> tuple[list[Tensor], list[str]]:
        return results + [F.max_pool2d(results[-1], kernel_size=1, stride=2, padding=0)], names + ["pool"]


class LastLevelP6P7(nn.Module):
    """RetinaNet's P6 = conv3x3/2(P5 or C5), P7 = conv3x3/2(ReLU(P6)), named "p6", "p7".

    P6 is computed from the FPN's P5 when ``in_channels == out_channels``, otherwise from the
    backbone's C5 (torchvision's rule).
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.p6 = nn.Conv2d(in_channels, out_channels, 3, 2, 1)
        self.p7 = nn.Conv2d(out_channels, out_channels, 3, 2, 1)
        for module in (self.p6, self.p7):
            nn.init.kaiming_uniform_(module.weight, a=1)
            nn.init.constant_(module.bias, 0)
        self.use_p5 = in_channels == out_channels

    def forward(self, results: list[Tensor], inputs: list[Tensor], names: list[str]) -> tuple[list[Tensor], list[str]]:
        source = results[-1] if self.use_p5 else inputs[-1]
        p6 = self.p6(source)
        p7 = self.p7(F.relu(p6))
        return results + [p6, p7], names + ["p6", "p7"]


def _conv_block(in_chs: int, out_chs: int, kernel_size: int,
                norm_layer: Callable[[int], nn.Module] | None) -> nn.Sequential:
    """A convolution (bias only without a norm), then the optional norm; no activation (FPN)."""
    layers: list[nn.Module] = [nn.Conv2d(in_chs, out_chs, kernel_size, padding=kernel_size // 2,
                                         bias=norm_layer is None)]
    if norm_layer is not None:
        layers.append(norm_layer(out_chs))
    return nn.Sequential(*layers)


class FeaturePyramidNetwork(nn.Module):
    """FPN over named feature maps, finest first: forward(OrderedDict) -> OrderedDict of P-levels (same names).

    Args:
        in_channels_list: channels of each input map, finest first.
        out_channels: d, the channels of every pyramid level.
        extra_blocks: ``LastLevelMaxPool``, ``LastLevelP6P7`` or None (no extra levels).
        norm_layer: optional normalisation after each convolution (none in the paper).
    """

    _version = 2  # version 1 had inner_blocks.{i} / layer_blocks.{i} as bare convolutions

    def __init__(self, in_channels_list: Sequence[int], out_channels: int, extra_blocks: nn.Module | None = None,
                 norm_layer: Callable[[int], nn.Module] | None = None):
        super().__init__()
        if not in_channels_list or any(not isinstance(c, int) or c < 1 for c in in_channels_list):
            raise ValueError(f"in_channels_list must be a non-empty list of positive ints, got {in_channels_list!r}")
        self.inner_blocks = nn.ModuleList([_conv_block(c, out_channels, 1, norm_layer) for c in in_channels_list])
        self.layer_blocks = nn.ModuleList([_conv_block(out_channels, out_channels, 3, norm_layer)
                                           for _ in in_channels_list])
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_uniform_(module.weight, a=1)
                if module.bias is not None:
                    nn.init.constant_(module.bias, 0)
        self.extra_blocks = extra_blocks  # initialised by its own constructor
        self.in_channels_list = list(in_channels_list)
        self.out_channels = out_channels

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        version = local_metadata.get("version", None)
        if version is None or version < 2:  # inner_blocks.{i}.weight -> inner_blocks.{i}.0.weight
            for block in ("inner_blocks", "layer_blocks"):
                for i in range(len(self.inner_blocks)):
                    for kind in ("weight", "bias"):
                        old_key, new_key = f"{prefix}{block}.{i}.{kind}", f"{prefix}{block}.{i}.0.{kind}"
                        if old_key in state_dict:
                            state_dict[new_key] = state_dict.pop(old_key)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def forward(self, features: "OrderedDict[str, Tensor]") -> "OrderedDict[str, Tensor]":
        names, inputs = list(features.keys()), list(features.values())
        if len(inputs) != len(self.inner_blocks):
            raise ValueError(f"FeaturePyramidNetwork expects {len(self.inner_blocks)} feature maps, got {len(inputs)}")
        top_down = self.inner_blocks[-1](inputs[-1])  # lateral 1x1 of the coarsest map
        results = [self.layer_blocks[-1](top_down)]
        for level in range(len(inputs) - 2, -1, -1):
            lateral = self.inner_blocks[level](inputs[level])
            # merged = lateral(C_l) + upsample_x2(merged_{l+1}), nearest neighbour to C_l's size
            top_down = lateral + F.interpolate(top_down, size=lateral.shape[-2:], mode="nearest")
            results.insert(0, self.layer_blocks[level](top_down))  # 3x3 against aliasing
        if self.extra_blocks is not None:
            results, names = self.extra_blocks(results, inputs, names)
        return OrderedDict(zip(names, results))


class BackboneWithFPN(nn.Module):
    """``body`` (named multi-scale features) followed by ``fpn``; ``out_channels`` is the pyramid's d."""

    def __init__(self, body: nn.Module, fpn: FeaturePyramidNetwork):
        super().__init__()
        self.body = body
        self.fpn = fpn
        self.out_channels = fpn.out_channels

    def forward(self, x: Tensor) -> "OrderedDict[str, Tensor]":
        return self.fpn(self.body(x))  # {"0": P2, "1": P3, "2": P4, "3": P5, "pool": P6}


def resnet_fpn_backbone(backbone_name: str = "resnet50", *,
                        norm_layer: str | Callable[[int], nn.Module] = "frozen_batch_norm",
                        trainable_layers: int = 3, returned_layers: Sequence[int] | None = None,
                        extra_blocks: nn.Module | None = None, out_channels: int = 256) -> BackboneWithFPN:
    """A canon ResNet with an FPN on top, torchvision's ``resnet_fpn_backbone``.

    Args:
        backbone_name: one of ``RESNET_CONSTRUCTORS`` (resnet18 .. resnet152, resnext50_32x4d, ...).
        norm_layer: the ResNet's normalisation: "frozen_batch_norm" (torchvision's detection
            default), "batch_norm", "group_norm", or a callable taking the channel count.
        trainable_layers: how many of (layer4, layer3, layer2, layer1, conv1) train, 0..5; 5
            also trains ``bn1``. The others get ``requires_grad=False``.
        returned_layers: which stages (1..4) feed the FPN; default (1, 2, 3, 4); RetinaNet uses (2, 3, 4).
        extra_blocks: default ``LastLevelMaxPool()``.
        out_channels: the FPN's d.
    """
    if backbone_name not in RESNET_CONSTRUCTORS:
        raise ValueError(f"backbone_name must be one of {sorted(RESNET_CONSTRUCTORS)}, got {backbone_name!r}")
    if not isinstance(trainable_layers, int) or not 0 <= trainable_layers <= 5:
        raise ValueError(f"trainable_layers must be an int in [0, 5], got {trainable_layers!r}")
    returned_layers = tuple(returned_layers) if returned_layers is not None else (1, 2, 3, 4)
    if not returned_layers or any(k not in (1, 2, 3, 4) for k in returned_layers) \
            or list(returned_layers) != sorted(set(returned_layers)):
        raise ValueError(f"returned_layers must be increasing stage numbers in 1..4, got {returned_layers!r}")
    resnet = RESNET_CONSTRUCTORS[backbone_name](num_classes=0, norm_layer=resolve_norm_layer(norm_layer))
    layers_to_train = list(TRAINABLE_ORDER[:trainable_layers]) + (["bn1"] if trainable_layers == 5 else [])
    for name, parameter in resnet.named_parameters():
        if not any(name.startswith(layer) for layer in layers_to_train):
            parameter.requires_grad_(False)
    body = ResNetBody(resnet, {f"layer{k}": str(i) for i, k in enumerate(returned_layers)})
    fpn = FeaturePyramidNetwork(body.out_channels, out_channels,
                                extra_blocks=LastLevelMaxPool() if extra_blocks is None else extra_blocks)
    return BackboneWithFPN(body, fpn)
