"""VGG: very deep stacks of 3×3 convolutions (configurations A, B, D, E), with and without BN.

Paper: "Very Deep Convolutional Networks for Large-Scale Image Recognition", Simonyan and
Zisserman, 2014, arXiv:1409.1556. The ``_bn`` variants add batch normalisation, "Batch
Normalization: Accelerating Deep Network Training by Reducing Internal Covariate Shift", Ioffe
and Szegedy, 2015, arXiv:1502.03167.

Follows the paper:
    - Table 1, configurations A (11 weight layers), B (13), D (16) and E (19): 3×3 convolutions at
      stride 1 with padding 1, ReLU after each, five 2×2/2 max-pools, widths 64-128-256-512-512.
    - Two hidden fully connected layers of 4096 with ReLU and dropout 0.5, then the classes.

Deviates, and why:
    - An adaptive average pool to 7×7 before the classifier (an identity at 224 px) lets the net
      take other input sizes, as torchvision's does. The paper's dense evaluation instead turns the
      fully connected layers into convolutions; that is an evaluation procedure, not a layer.
    - Initialisation follows torchvision (Kaiming-normal convolutions, N(0, 0.01²) linear layers,
      zero biases), not the paper's "train A first, then copy its layers into the deeper nets"; the
      paper itself notes that Glorot initialisation works without the pre-training.
    - Configuration A-LRN and C (with 1×1 convolutions) are not provided.
    - ``_bn``: BatchNorm between each convolution and its ReLU (not in the paper; torchvision's).

Layout: every registered name has torchvision's ``state_dict`` keys and shapes (``features.<i>``
in the order conv[, bn], relu, ..., pool; ``classifier.0``, ``.3`` and ``.6``), so torchvision
checkpoints load with ``strict=True`` and give the same logits.
"""
from __future__ import annotations

from typing import Sequence, Union

import torch
import torch.nn as nn

from canon.models._validate import check_image_input
from canon.registry import register_model

__all__ = ["VGG", "VGG_CONFIGS", "make_vgg_features", "vgg11", "vgg11_bn", "vgg13", "vgg13_bn",
           "vgg16", "vgg16_bn", "vgg19", "vgg19_bn"]

PAPER = "Very Deep Convolutional Networks for Large-Scale Image Recognition, 2014, arXiv:1409.1556"

# Table 1 of the paper: output channels of each 3×3 convolution, "M" for a 2×2/2 max-pool.
VGG_CONFIGS: dict[str, list[Union[int, str]]] = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
          512, 512, 512, 512, "M"],
}

# Five 2×2/2 pools: the fifth needs a 2×2 input, so H >= 2·2^4 = 32.
MIN_INPUT_SIZE = 32


def make_vgg_features(config: Sequence[Union[int, str]], *, in_chans: int = 3, batch_norm: bool = False) -> nn.Sequential:
    """The convolutional stack of one configuration: (N, in_chans, H, W) → (N, 512, H/32, W/32)."""
    layers: list[nn.Module] = []
    channels = in_chans
    for item in config:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        layers.append(nn.Conv2d(channels, int(item), kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(int(item)))
        layers.append(nn.ReLU(inplace=True))
        channels = int(item)
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """VGG classifier: ``features`` → 7×7 average pool → three fully connected layers.

    Args:
        config: a key of ``VGG_CONFIGS`` ("A", "B", "D", "E") or an explicit list.
        batch_norm: BatchNorm after every convolution.
        num_classes: classifier outputs (0: identity, the 4096 fc7 features).
        in_chans: input image channels.
        dropout: dropout probability of the two hidden fully connected layers.
        init_weights: apply torchvision's initialisation (off leaves PyTorch's defaults).
    """

    def __init__(self, *, config: str | Sequence[Union[int, str]], batch_norm: bool = False,
                 num_classes: int = 1000, in_chans: int = 3, dropout: float = 0.5, init_weights: bool = True):
        super().__init__()
        if isinstance(config, str):
            if config not in VGG_CONFIGS:
                raise ValueError(f"config must be one of {sorted(VGG_CONFIGS)} or a list, got {config!r}")
            config = VGG_CONFIGS[config]
        if not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"num_classes must be an int >= 0, got {num_classes!r}")
        if not isinstance(in_chans, int) or in_chans < 1:
            raise ValueError(f"in_chans must be an int >= 1, got {in_chans!r}")
        self.num_classes, self.in_chans, self.num_features = num_classes, in_chans, 4096
        self.min_input_size = 2 ** sum(1 for item in config if item == "M")

        self.features = make_vgg_features(config, in_chans=in_chans, batch_norm=batch_norm)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096),  # 0: fc6
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),  # 3: fc7
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, num_classes) if num_classes else nn.Identity(),  # 6: fc8
        )
        if init_weights:
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                    nn.init.zeros_(m.bias)
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)
                elif isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, 0.0, 0.01)
                    nn.init.zeros_(m.bias)

    @property
    def _model_name(self) -> str:
        return getattr(self, "canon_name", type(self).__name__)  # set by canon.create_model

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)  # (N, 512, H/32, W/32)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(self.avgpool(x), 1)  # (N, 25088)
        return self.classifier[:-1](x) if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image_input(x, in_chans=self.in_chans, min_size=self.min_input_size, model_name=self._model_name)
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh last layer with ``num_classes`` outputs (0: identity, the 4096 fc7 features)."""
        if not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"num_classes must be an int >= 0, got {num_classes!r}")
        self.num_classes = num_classes
        self.classifier[-1] = nn.Linear(4096, num_classes) if num_classes else nn.Identity()


# ----------------------------------------------------------------------------- registered names
_REG = dict(task="classification", paper=PAPER, input_size=(3, 224, 224), compatible_with="torchvision")


@register_model(VGG, **_REG)
def vgg11(**kwargs) -> VGG:
    return VGG(config="A", batch_norm=False, **kwargs)


@register_model(VGG, **_REG)
def vgg11_bn(**kwargs) -> VGG:
    return VGG(config="A", batch_norm=True, **kwargs)


@register_model(VGG, **_REG)
def vgg13(**kwargs) -> VGG:
    return VGG(config="B", batch_norm=False, **kwargs)


@register_model(VGG, **_REG)
def vgg13_bn(**kwargs) -> VGG:
    return VGG(config="B", batch_norm=True, **kwargs)


@register_model(VGG, **_REG)
def vgg16(**kwargs) -> VGG:
    return VGG(config="D", batch_norm=False, **kwargs)


@register_model(VGG, **_REG)
def vgg16_bn(**kwargs) -> VGG:
    return VGG(config="D", batch_norm=True, **kwargs)


@register_model(VGG, **_REG)
def vgg19(**kwargs) -> VGG:
    return VGG(config="E", batch_norm=False, **kwargs)


@register_model(VGG, **_REG)
def vgg19_bn(**kwargs) -> VGG:
    return VGG(config="E", batch_norm=True, **kwargs)
