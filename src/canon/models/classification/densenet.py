"""DenseNet: every layer receives the feature maps of all preceding layers in its block.

Paper: "Densely Connected Convolutional Networks", Huang, Liu, van der Maaten, Weinberger, 2016,
arXiv:1608.06993.

Follows the paper:
    - Eq. 2: layer ℓ of a dense block computes x_ℓ = H_ℓ([x_0, x_1, ..., x_{ℓ-1}]), the inputs
      concatenated along channels; each layer adds ``growth_rate`` (k) channels.
    - DenseNet-B bottleneck: H_ℓ = BN-ReLU-Conv(1×1, 4k)-BN-ReLU-Conv(3×3, k).
    - DenseNet-C transition layers between blocks: BN-ReLU-Conv(1×1) with compression θ = 0.5
      (half the channels) and a 2×2 average pool.
    - Table 1 (ImageNet): a 7×7/2 convolution with 2k channels (96 for DenseNet-161, k=48) and a
      3×3/2 max-pool, four dense blocks of (6, 12, 24, 16) / (6, 12, 36, 24) / (6, 12, 32, 32) /
      (6, 12, 48, 32) layers for DenseNet-121 / 161 / 169 / 201, global average pooling and a
      linear classifier.
    - Memory-efficient implementation ("Memory-Efficient Implementation of DenseNets", Pleiss et al.,
      2017, arXiv:1707.06990): with ``memory_efficient=True`` the concatenation, first BN, ReLU and
      1×1 convolution of each layer are recomputed in the backward pass (``torch.utils.checkpoint``)
      instead of stored; the gradients are the same.

Deviates, and why:
    - torchvision's layout (``features.denseblockN.denselayerM.{norm1,conv1,norm2,conv2}``,
      ``features.transitionN``, ``features.norm5``, ``classifier``) so its checkpoints load; like
      torchvision, a BN + ReLU after the last block (``norm5``) before pooling, as in the authors' code.
    - Unlike torchvision, the recomputation in memory-efficient mode does not update the first BN's
      running statistics a second time (it normalises with the batch statistics only), so
      ``memory_efficient=True`` leaves exactly the same running statistics as the default mode.

Layout: every registered name has torchvision's ``state_dict`` keys and shapes (densenet121:
7,978,856 parameters).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp

from canon.models._validate import check_image_input
from canon.registry import register_model

__all__ = ["DenseNet", "DenseLayer", "DenseBlock", "Transition", "densenet121", "densenet161", "densenet169",
           "densenet201"]

PAPER = "Densely Connected Convolutional Networks, 2016, arXiv:1608.06993"


class DenseLayer(nn.Module):
    """H_ℓ of DenseNet-B: BN-ReLU-Conv1×1(bn_size·k) - BN-ReLU-Conv3×3(k) over the concatenated inputs."""

    def __init__(self, in_chs: int, growth_rate: int, bn_size: int, drop_rate: float, memory_efficient: bool):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(in_chs)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_chs, bn_size * growth_rate, kernel_size=1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth_rate)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth_rate, growth_rate, kernel_size=3, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.memory_efficient = memory_efficient

    def bottleneck(self, features: Sequence[torch.Tensor], recompute: bool = False) -> torch.Tensor:
        """[x_0, ..., x_{ℓ-1}] -> Conv1×1(ReLU(BN(concat))), (N, bn_size·k, H, W).

        ``recompute``: the checkpoint's second pass; normalise with the batch statistics without
        updating the running statistics again.
        """
        x = torch.cat(list(features), dim=1)  # (N, C_0 + (ℓ-1)·k, H, W)
        norm = self.norm1
        if recompute and norm.training and norm.track_running_stats:
            # Same computation as norm1 (batch statistics), but the running-statistics update goes to copies.
            x = F.batch_norm(x, norm.running_mean.clone(), norm.running_var.clone(), norm.weight, norm.bias,
                             training=True, momentum=norm.momentum if norm.momentum is not None else 0.0,
                             eps=norm.eps)
        else:
            x = self.norm1(x)
        return self.conv1(self.relu1(x))

    def _checkpointed_bottleneck(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        calls = 0

        def run(*inputs):
            nonlocal calls
            calls += 1
            return self.bottleneck(inputs, recompute=calls > 1)

        return cp.checkpoint(run, *features, use_reentrant=False)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        if self.memory_efficient and torch.is_grad_enabled() and any(f.requires_grad for f in features):
            x = self._checkpointed_bottleneck(features)
        else:
            x = self.bottleneck(features)
        x = self.conv2(self.relu2(self.norm2(x)))  # (N, k, H, W)
        return F.dropout(x, p=self.drop_rate, training=self.training) if self.drop_rate > 0 else x


class DenseBlock(nn.ModuleDict):
    """``num_layers`` dense layers; returns all feature maps concatenated, (N, C + num_layers·k, H, W)."""

    def __init__(self, num_layers: int, in_chs: int, growth_rate: int, bn_size: int, drop_rate: float,
                 memory_efficient: bool):
        super().__init__()
        for i in range(num_layers):
            self.add_module(f"denselayer{i + 1}", DenseLayer(in_chs + i * growth_rate, growth_rate, bn_size,
                                                             drop_rate, memory_efficient))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, dim=1)


class Transition(nn.Sequential):
    """DenseNet-C transition: BN-ReLU-Conv1×1 (compression to ``out_chs``) then 2×2/2 average pool."""

    def __init__(self, in_chs: int, out_chs: int):
        super().__init__(OrderedDict(
            norm=nn.BatchNorm2d(in_chs), relu=nn.ReLU(inplace=True),
            conv=nn.Conv2d(in_chs, out_chs, kernel_size=1, bias=False), pool=nn.AvgPool2d(kernel_size=2, stride=2)))


class DenseNet(nn.Module):
    """DenseNet-BC classifier (torchvision layout).

    Args:
        growth_rate: k, channels added by each layer.
        block_config: layers per dense block, e.g. (6, 12, 24, 16) for DenseNet-121.
        num_init_features: channels of the stem convolution (2k in the paper).
        bn_size: bottleneck width as a multiple of k (4 in the paper).
        drop_rate: dropout after each dense layer (0 on ImageNet in the paper).
        compression: θ, the fraction of channels a transition keeps (0.5).
        memory_efficient: recompute each layer's concatenation/BN/ReLU/1×1 conv in the backward pass.
        num_classes: classifier outputs (0: identity, pooled features). in_chans: input channels.
    """

    def __init__(self, *, growth_rate: int = 32, block_config: Sequence[int] = (6, 12, 24, 16),
                 num_init_features: int = 64, bn_size: int = 4, drop_rate: float = 0.0, compression: float = 0.5,
                 memory_efficient: bool = False, num_classes: int = 1000, in_chans: int = 3):
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"num_classes must be an int >= 0, got {num_classes!r}")
        if not isinstance(in_chans, int) or in_chans < 1:
            raise ValueError(f"in_chans must be an int >= 1, got {in_chans!r}")
        if not 0 < compression <= 1:
            raise ValueError(f"compression must be in (0, 1], got {compression!r}")
        if not 0 <= drop_rate < 1:
            raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate!r}")
        self.num_classes, self.in_chans = num_classes, in_chans
        self.memory_efficient = memory_efficient

        layers = OrderedDict(
            conv0=nn.Conv2d(in_chans, num_init_features, kernel_size=7, stride=2, padding=3, bias=False),
            norm0=nn.BatchNorm2d(num_init_features), relu0=nn.ReLU(inplace=True),
            pool0=nn.MaxPool2d(kernel_size=3, stride=2, padding=1))  # (N, 2k, H/4, W/4)
        chs = num_init_features
        for i, num_layers in enumerate(block_config):
            layers[f"denseblock{i + 1}"] = DenseBlock(num_layers, chs, growth_rate, bn_size, drop_rate,
                                                      memory_efficient)
            chs += num_layers * growth_rate
            if i != len(block_config) - 1:
                layers[f"transition{i + 1}"] = Transition(chs, int(chs * compression))
                chs = int(chs * compression)
        layers["norm5"] = nn.BatchNorm2d(chs)
        self.features = nn.Sequential(layers)
        self.num_features = chs
        self.output_stride = 4 * 2 ** (len(block_config) - 1)
        self.classifier: nn.Module = nn.Linear(chs, num_classes) if num_classes else nn.Identity()

        # torchvision's initialisation.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def _model_name(self) -> str:
        return getattr(self, "canon_name", type(self).__name__)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.features(x))  # (N, num_features, H/32, W/32)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)  # (N, num_features)
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image_input(x, in_chans=self.in_chans, min_size=self.output_stride, model_name=self._model_name())
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh linear head with ``num_classes`` outputs (0: identity, pooled features)."""
        if not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"num_classes must be an int >= 0, got {num_classes!r}")
        self.num_classes = num_classes
        self.classifier = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()
        if num_classes:
            nn.init.zeros_(self.classifier.bias)


# ----------------------------------------------------------------------------- registered names
_REG = dict(task="classification", paper=PAPER, input_size=(3, 224, 224), compatible_with="torchvision")


@register_model(DenseNet, **_REG)
def densenet121(**kwargs) -> DenseNet:
    return DenseNet(**{**dict(growth_rate=32, block_config=(6, 12, 24, 16), num_init_features=64), **kwargs})


@register_model(DenseNet, **_REG)
def densenet161(**kwargs) -> DenseNet:
    return DenseNet(**{**dict(growth_rate=48, block_config=(6, 12, 36, 24), num_init_features=96), **kwargs})


@register_model(DenseNet, **_REG)
def densenet169(**kwargs) -> DenseNet:
    return DenseNet(**{**dict(growth_rate=32, block_config=(6, 12, 32, 32), num_init_features=64), **kwargs})


@register_model(DenseNet, **_REG)
def densenet201(**kwargs) -> DenseNet:
    return DenseNet(**{**dict(growth_rate=32, block_config=(6, 12, 48, 32), num_init_features=64), **kwargs})
