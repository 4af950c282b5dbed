"""GoogLeNet (Inception v1): Inception modules, two auxiliary classifiers, global average pooling.

Paper: "Going Deeper with Convolutions", Szegedy et al., 2014, arXiv:1409.4842.

Follows the paper:
    - Table 1: a 7×7/2 convolution, 3×3/2 max-pool, 1×1 then 3×3 convolutions, nine Inception
      modules (3a, 3b, 4a-4e, 5a, 5b) with the table's filter counts, max-pools between stages,
      global average pooling, dropout and one linear layer.
    - Inception module (Fig. 2b): four parallel branches — 1×1; 1×1 reduce then 3×3; 1×1 reduce
      then 5×5; 3×3/1 max-pool then a 1×1 projection — concatenated along channels.
    - Two auxiliary classifiers on the outputs of 4a and 4d (section 5): a 1×1 convolution to
      128 channels, a 1024-unit fully connected layer with ReLU, 70% dropout and a linear
      classifier; used only in training, their losses weighted by 0.3 (``aux_loss_weight``),
      discarded at inference.
    - ``googlenet_paper``: the true 5×5 convolution in the third branch, convolutions with bias
      and ReLU and no batch normalisation, local response normalisation after the first max-pool
      and after the 3×3 convolution (size 5, α=1e-4, β=0.75, k=1 as in the released Caffe model),
      the auxiliary heads' 5×5/3 average pool, the 3×3/2 max-pool before 5a, and 40% dropout
      before the classifier.

Deviates, and why:
    - ``googlenet`` is torchvision's form, so its checkpoints load: batch normalisation
      (eps=1e-3) after every convolution instead of biases and LRN, a 3×3 convolution where the
      paper has 5×5 (a known torchvision quirk inherited from the ported TensorFlow weights),
      a 2×2/2 max-pool before 5a where Table 1 has 3×3/2 (same output size),
      adaptive average pooling to 4×4 in the auxiliary heads (any input size works), and 20%
      dropout before the classifier. torchvision's ``transform_input`` (re-normalisation for the
      ported TensorFlow weights) is not offered.
    - In training mode the model returns ``{"logits": main, "aux_logits": [aux1, aux2]}`` (the
      canon convention) rather than torchvision's namedtuple; in eval mode, the logits tensor.
    - ``googlenet_paper`` initialises weights Xavier-uniform with zero biases (the paper gives no
      initialisation; the released Caffe model uses Xavier); pooling rounds up (``ceil_mode``)
      as Caffe does.

Layout: ``googlenet`` has torchvision's ``state_dict`` keys and shapes (13,004,888 parameters
with the auxiliary heads at 1000 classes, 6,624,904 with ``aux_logits=False``).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from canon.models._validate import check_image_input
from canon.registry import register_model

__all__ = ["GoogLeNet", "GoogLeNetPaper", "Inception", "InceptionAux", "googlenet", "googlenet_paper"]

PAPER = "Going Deeper with Convolutions, 2014, arXiv:1409.4842"

# Table 1: (name, in_chans, #1×1, #3×3 reduce, #3×3, #5×5 reduce, #5×5, pool proj)
INCEPTION_CONFIG = (
    ("inception3a", 192, 64, 96, 128, 16, 32, 32),
    ("inception3b", 256, 128, 128, 192, 32, 96, 64),
    ("inception4a", 480, 192, 96, 208, 16, 48, 64),
    ("inception4b", 512, 160, 112, 224, 24, 64, 64),
    ("inception4c", 512, 128, 128, 256, 24, 64, 64),
    ("inception4d", 512, 112, 144, 288, 32, 64, 64),
    ("inception4e", 528, 256, 160, 320, 32, 128, 128),
    ("inception5a", 832, 256, 160, 320, 32, 128, 128),
    ("inception5b", 832, 384, 192, 384, 48, 128, 128),
)


class BasicConv2d(nn.Module):
    """Convolution without bias, batch norm (eps=1e-3), ReLU: torchvision's conv unit."""

    def __init__(self, in_chans: int, out_chans: int, kernel_size: int, stride: int = 1, padding: int = 0):
        super().__init__()
        self.conv = nn.Conv2d(in_chans, out_chans, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_chans, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


class PaperConv2d(nn.Module):
    """Convolution with bias, then ReLU: the paper's conv unit (no batch norm in 2014)."""

    def __init__(self, in_chans: int, out_chans: int, kernel_size: int, stride: int = 1, padding: int = 0):
        super().__init__()
        self.conv = nn.Conv2d(in_chans, out_chans, kernel_size, stride=stride, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(x), inplace=True)


ConvUnit = Callable[..., nn.Module]


class Inception(nn.Module):
    """Fig. 2b: 1×1 | 1×1→3×3 | 1×1→k×k (k=5 in the paper, 3 in torchvision) | pool→1×1, concatenated."""

    def __init__(self, in_chans: int, ch1x1: int, ch3x3red: int, ch3x3: int, ch5x5red: int, ch5x5: int,
                 pool_proj: int, *, conv_unit: ConvUnit = BasicConv2d, branch3_kernel: int = 3):
        super().__init__()
        self.branch1 = conv_unit(in_chans, ch1x1, kernel_size=1)
        self.branch2 = nn.Sequential(conv_unit(in_chans, ch3x3red, kernel_size=1),
                                     conv_unit(ch3x3red, ch3x3, kernel_size=3, padding=1))
        self.branch3 = nn.Sequential(conv_unit(in_chans, ch5x5red, kernel_size=1),
                                     conv_unit(ch5x5red, ch5x5, kernel_size=branch3_kernel,
                                               padding=branch3_kernel // 2))
        self.branch4 = nn.Sequential(nn.MaxPool2d(kernel_size=3, stride=1, padding=1, ceil_mode=True),
                                     conv_unit(in_chans, pool_proj, kernel_size=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)]
        return torch.cat(branches, dim=1)  # (N, ch1x1 + ch3x3 + ch5x5 + pool_proj, H, W)


class InceptionAux(nn.Module):
    """Auxiliary classifier: pool to 4×4, 1×1 conv to 128, FC 2048→1024 + ReLU, dropout, FC → classes."""

    def __init__(self, in_chans: int, num_classes: int, *, conv_unit: ConvUnit = BasicConv2d,
                 dropout: float = 0.7, paper_pool: bool = False):
        super().__init__()
        self.paper_pool = paper_pool  # the paper's 5×5/3 average pool, else adaptive to 4×4
        self.conv = conv_unit(in_chans, 128, kernel_size=1)
        self.fc1 = nn.Linear(2048, 1024)
        self.fc2 = nn.Linear(1024, num_classes) if num_classes else nn.Identity()
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.paper_pool:
            if not all(14 <= side <= 16 for side in x.shape[-2:]):
                raise ValueError(
                    f"googlenet_paper's auxiliary classifiers pool 5×5/3 to 4×4 as in the paper, which needs "
                    f"stage-4 maps of 14-16 px (inputs of about 224 px) in training mode; got a "
                    f"{tuple(x.shape[-2:])} map. Train at 224 px, or build with aux_logits=False")
            x = F.avg_pool2d(x, kernel_size=5, stride=3)  # (N, C, 4, 4) from a 14..16 px map
        else:
            x = F.adaptive_avg_pool2d(x, (4, 4))  # (N, C, 4, 4)
        x = torch.flatten(self.conv(x), 1)  # (N, 2048)
        x = F.relu(self.fc1(x), inplace=True)  # (N, 1024)
        x = F.dropout(x, self.dropout, training=self.training)
        return self.fc2(x)  # (N, num_classes)


class _InceptionV1(nn.Module):
    """The network of Table 1, parametrised by its conv unit; see GoogLeNet and GoogLeNetPaper."""

    aux_loss_weight = 0.3  # section 5: auxiliary losses are added with weight 0.3

    def __init__(self, *, num_classes: int, in_chans: int, aux_logits: bool, dropout: float, dropout_aux: float,
                 conv_unit: ConvUnit, branch3_kernel: int, lrn: bool, paper_aux_pool: bool, pool4_kernel: int):
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"num_classes must be an int >= 0, got {num_classes!r}")
        if not isinstance(in_chans, int) or in_chans < 1:
            raise ValueError(f"in_chans must be an int >= 1, got {in_chans!r}")
        for name, rate in (("dropout", dropout), ("dropout_aux", dropout_aux)):
            if not 0.0 <= rate < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {rate!r}")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.aux_logits = aux_logits
        self.num_features = 1024

        def local_response_norm() -> nn.Module:
            return nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0) if lrn else nn.Identity()

        self.conv1 = conv_unit(in_chans, 64, kernel_size=7, stride=2, padding=3)
        self.maxpool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.lrn1 = local_response_norm()
        self.conv2 = conv_unit(64, 64, kernel_size=1)
        self.conv3 = conv_unit(64, 192, kernel_size=3, padding=1)
        self.lrn2 = local_response_norm()
        self.maxpool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        for name, *channels in INCEPTION_CONFIG[:2]:
            self.add_module(name, Inception(*channels, conv_unit=conv_unit, branch3_kernel=branch3_kernel))
        self.maxpool3 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        for name, *channels in INCEPTION_CONFIG[2:7]:
            self.add_module(name, Inception(*channels, conv_unit=conv_unit, branch3_kernel=branch3_kernel))
        self.maxpool4 = nn.MaxPool2d(pool4_kernel, stride=2, ceil_mode=True)
        for name, *channels in INCEPTION_CONFIG[7:]:
            self.add_module(name, Inception(*channels, conv_unit=conv_unit, branch3_kernel=branch3_kernel))

        aux = dict(conv_unit=conv_unit, dropout=dropout_aux, paper_pool=paper_aux_pool)
        self.aux1 = InceptionAux(512, num_classes, **aux) if aux_logits else None  # after 4a
        self.aux2 = InceptionAux(528, num_classes, **aux) if aux_logits else None  # after 4d
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    @property
    def _model_name(self) -> str:
        return getattr(self, "canon_name", type(self).__name__)  # set by canon.create_model

    def _trunk(self, x: torch.Tensor, with_aux: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        aux_outputs = []
        x = self.maxpool1(self.conv1(x))  # (N, 64, 56, 56) at 224
        x = self.lrn1(x)
        x = self.lrn2(self.conv3(self.conv2(x)))  # (N, 192, 56, 56)
        x = self.maxpool2(x)  # (N, 192, 28, 28)
        x = self.inception3b(self.inception3a(x))  # (N, 480, 28, 28)
        x = self.maxpool3(x)  # (N, 480, 14, 14)
        x = self.inception4a(x)  # (N, 512, 14, 14)
        if with_aux:
            aux_outputs.append(self.aux1(x))
        x = self.inception4d(self.inception4c(self.inception4b(x)))  # (N, 528, 14, 14)
        if with_aux:
            aux_outputs.append(self.aux2(x))
        x = self.maxpool4(self.inception4e(x))  # (N, 832, 7, 7)
        x = self.inception5b(self.inception5a(x))  # (N, 1024, 7, 7)
        return x, aux_outputs

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_chans, H, W) -> (N, 1024, H/32, W/32); the auxiliary heads are not run."""
        return self._trunk(x, with_aux=False)[0]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.dropout(torch.flatten(self.avgpool(x), 1))  # (N, 1024)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor):
        # Five stride-2 reductions: 32 px is the smallest input whose last map keeps one real pixel.
        check_image_input(x, in_chans=self.in_chans, min_size=32, model_name=self._model_name)
        with_aux = self.training and self.aux1 is not None
        features, aux_outputs = self._trunk(x, with_aux=with_aux)
        logits = self.forward_head(features)
        return {"logits": logits, "aux_logits": aux_outputs} if with_aux else logits

    def reset_classifier(self, num_classes: int) -> None:
        """Fresh linear classifiers (main and auxiliary) with ``num_classes`` outputs (0: identity)."""
        if not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"num_classes must be an int >= 0, got {num_classes!r}")
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()
        for aux in (self.aux1, self.aux2):
            if aux is not None:
                aux.fc2 = nn.Linear(1024, num_classes) if num_classes else nn.Identity()


class GoogLeNet(_InceptionV1):
    """torchvision's GoogLeNet: batch norm, a 3×3 "5×5" branch, adaptive auxiliary pooling.

    Args:
        num_classes: classifier outputs (0: identity head, pooled features).
        in_chans: input image channels.
        aux_logits: build the two auxiliary classifiers (used in training mode only).
        dropout: before the main classifier (torchvision: 0.2).
        dropout_aux: inside the auxiliary classifiers (0.7).
    """

    def __init__(self, *, num_classes: int = 1000, in_chans: int = 3, aux_logits: bool = True,
                 dropout: float = 0.2, dropout_aux: float = 0.7):
        super().__init__(num_classes=num_classes, in_chans=in_chans, aux_logits=aux_logits, dropout=dropout,
                         dropout_aux=dropout_aux, conv_unit=BasicConv2d, branch3_kernel=3, lrn=False,
                         paper_aux_pool=False, pool4_kernel=2)
        # torchvision's initialisation: N(0, 0.01²) truncated at ±2, BN scale 1 and shift 0.
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, mean=0.0, std=0.01, a=-2, b=2)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


class GoogLeNetPaper(_InceptionV1):
    """The 2014 network: biased convolutions with ReLU, LRN, true 5×5 branch, 5×5/3 auxiliary pooling.

    Args: as :class:`GoogLeNet`; ``dropout`` defaults to the paper's 0.4.
    """

    def __init__(self, *, num_classes: int = 1000, in_chans: int = 3, aux_logits: bool = True,
                 dropout: float = 0.4, dropout_aux: float = 0.7):
        super().__init__(num_classes=num_classes, in_chans=in_chans, aux_logits=aux_logits, dropout=dropout,
                         dropout_aux=dropout_aux, conv_unit=PaperConv2d, branch3_kernel=5, lrn=True,
                         paper_aux_pool=True, pool4_kernel=3)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)


# ----------------------------------------------------------------------------- registered names

@register_model(GoogLeNet, task="classification", paper=PAPER, input_size=(3, 224, 224),
                compatible_with="torchvision")
def googlenet(**kwargs) -> GoogLeNet:
    return GoogLeNet(**kwargs)


@register_model(GoogLeNetPaper, task="classification", paper=PAPER, input_size=(3, 224, 224))
def googlenet_paper(**kwargs) -> GoogLeNetPaper:
    return GoogLeNetPaper(**kwargs)
