"""AlexNet: the 2012 paper's network, and torchvision's single-tower variant.

Paper: "ImageNet Classification with Deep Convolutional Neural Networks", Krizhevsky, Sutskever,
Hinton, NeurIPS 2012 (no arXiv id). torchvision's variant follows "One weird trick for
parallelizing convolutional neural networks", Krizhevsky, 2014, arXiv:1404.5997.

``alexnet_paper`` follows the paper:
    - Five convolutional layers: 96 kernels 11×11×3 at stride 4 (a 55×55×96 map), then 256 5×5,
      384 3×3, 384 3×3 and 256 3×3; three fully connected layers of 4096, 4096 and the classes.
    - The two-GPU split (Fig. 2): conv2, conv4 and conv5 see only the kernel maps on their own GPU,
      i.e. convolutions with ``groups=2`` (5×5×48, 3×3×192, 3×3×192 kernels); conv3 and the fully
      connected layers see both halves. This gives 60,965,224 parameters at 1000 classes
      (the paper's "60 million").
    - ReLU after every convolutional and fully connected layer (Section 3.1).
    - Local response normalisation after ReLU on conv1 and conv2 (Section 3.3):
      ``b = a / (k + α Σ a²)^β`` over n = 5 adjacent maps, k = 2, α = 1e-4, β = 0.75.
    - Overlapping max-pooling, 3×3 at stride 2, after both normalisation layers and after conv5
      (Section 3.4).
    - Dropout 0.5 on the outputs of the two hidden fully connected layers (Section 4.2).
    - Initialisation (Section 5): weights N(0, 0.01²); biases 1 in conv2, conv4, conv5 and the
      hidden fully connected layers, 0 elsewhere.

``alexnet_paper`` deviates, and why:
    - Input 224×224 with padding 2 on conv1: (224 + 2·2 − 11) / 4 + 1 = 55, the paper's 55×55 map.
      The paper's 224 without padding gives 54.25, which is why Caffe's reference uses 227 and no
      padding; both give the same 55×55×96 map.
    - An adaptive average pool to 6×6 before the classifier (an identity at 224 px) lets the net
      take other sizes, as torchvision's does.
    - Data augmentation, PCA colour noise and the two-GPU placement itself belong to training, not
      to this module.

``alexnet`` is torchvision's layout exactly (64, 192, 384, 256, 256 kernels, no LRN, no groups,
dropout before fc6 and fc7, 61,100,840 parameters), so torchvision checkpoints load with
``strict=True`` and give the same logits.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from canon.layers.norms import LocalResponseNorm
from canon.models._validate import check_image_input
from canon.registry import register_model

__all__ = ["AlexNet", "AlexNetPaper", "alexnet", "alexnet_paper"]

PAPER = "ImageNet Classification with Deep Convolutional Neural Networks, 2012, NeurIPS (no arXiv id)"
PAPER_TORCHVISION = "One weird trick for parallelizing convolutional neural networks, 2014, arXiv:1404.5997"

# The smallest side both forms take: conv1 (11/4, pad 2) then three 3×3/2 max-pools need
# pool3 input >= 3  <=  pool2 input >= 7  <=  pool1 input >= 15  <=  (H + 4 - 11) // 4 + 1 >= 15.
MIN_INPUT_SIZE = 63


def _check_sizes(num_classes, in_chans) -> None:
    if not isinstance(num_classes, int) or num_classes < 0:
        raise ValueError(f"num_classes must be an int >= 0, got {num_classes!r}")
    if not isinstance(in_chans, int) or in_chans < 1:
        raise ValueError(f"in_chans must be an int >= 1, got {in_chans!r}")


class _AlexNetBase(nn.Module):
    """Shared head plumbing: ``features`` → 6×6 average pool → ``classifier`` (last entry: logits)."""

    features: nn.Sequential
    classifier: nn.Sequential

    @property
    def _model_name(self) -> str:
        return getattr(self, "canon_name", type(self).__name__)  # set by canon.create_model

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)  # (N, 256, 6, 6) at 224 px

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(self.avgpool(x), 1)  # (N, 9216)
        return self.classifier[:-1](x) if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image_input(x, in_chans=self.in_chans, min_size=MIN_INPUT_SIZE, model_name=self._model_name)
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh last layer with ``num_classes`` outputs (0: identity, the 4096 fc7 features)."""
        _check_sizes(num_classes, self.in_chans)
        self.num_classes = num_classes
        self.classifier[-1] = nn.Linear(4096, num_classes) if num_classes else nn.Identity()


class AlexNetPaper(_AlexNetBase):
    """The 2012 network: grouped conv2/4/5 (the GPU split), LRN, overlapping pooling, dropout."""

    def __init__(self, *, num_classes: int = 1000, in_chans: int = 3, dropout: float = 0.5):
        super().__init__()
        _check_sizes(num_classes, in_chans)
        self.num_classes, self.in_chans, self.num_features = num_classes, in_chans, 4096
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, 96, kernel_size=11, stride=4, padding=2),  # 0: (N, 96, 55, 55)
            nn.ReLU(inplace=True),
            LocalResponseNorm.alexnet(size=5, alpha=1e-4, beta=0.75, k=2.0),  # Section 3.3's α, not α/n
            nn.MaxPool2d(kernel_size=3, stride=2),  # (N, 96, 27, 27)
            nn.Conv2d(96, 256, kernel_size=5, padding=2, groups=2),  # 4: (N, 256, 27, 27), 5×5×48 kernels
            nn.ReLU(inplace=True),
            LocalResponseNorm.alexnet(size=5, alpha=1e-4, beta=0.75, k=2.0),  # Section 3.3's α, not α/n
            nn.MaxPool2d(kernel_size=3, stride=2),  # (N, 256, 13, 13)
            nn.Conv2d(256, 384, kernel_size=3, padding=1),  # 8: (N, 384, 13, 13), crosses the GPUs
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 384, kernel_size=3, padding=1, groups=2),  # 10: 3×3×192 kernels
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1, groups=2),  # 12: (N, 256, 13, 13)
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),  # (N, 256, 6, 6)
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Linear(256 * 6 * 6, 4096),  # 0: fc6
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),  # 3: fc7
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, num_classes) if num_classes else nn.Identity(),  # 6: fc8
        )
        # Section 5: N(0, 0.01²) weights; bias 1 where the paper says so, to give ReLUs positive input.
        bias_one = {id(self.features[4]), id(self.features[10]), id(self.features[12]),
                    id(self.classifier[0]), id(self.classifier[3])}
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.normal_(m.weight, mean=0.0, std=0.01)
                nn.init.constant_(m.bias, 1.0 if id(m) in bias_one else 0.0)


class AlexNet(_AlexNetBase):
    """torchvision's AlexNet: one tower of 64-192-384-256-256 kernels, no LRN, 61.1 M parameters."""

    def __init__(self, *, num_classes: int = 1000, in_chans: int = 3, dropout: float = 0.5):
        super().__init__()
        _check_sizes(num_classes, in_chans)
        self.num_classes, self.in_chans, self.num_features = num_classes, in_chans, 4096
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, 64, kernel_size=11, stride=4, padding=2),  # 0: (N, 64, 55, 55)
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),  # (N, 64, 27, 27)
            nn.Conv2d(64, 192, kernel_size=5, padding=2),  # 3
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),  # (N, 192, 13, 13)
            nn.Conv2d(192, 384, kernel_size=3, padding=1),  # 6
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),  # 8
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),  # 10
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),  # (N, 256, 6, 6)
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout),
            nn.Linear(256 * 6 * 6, 4096),  # 1
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),  # 4
            nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes) if num_classes else nn.Identity(),  # 6
        )
        # torchvision keeps PyTorch's default initialisation here; so do we.


# ----------------------------------------------------------------------------- registered names
@register_model(AlexNetPaper, task="classification", paper=PAPER, input_size=(3, 224, 224), compatible_with=None)
def alexnet_paper(**kwargs) -> AlexNetPaper:
    return AlexNetPaper(**kwargs)


@register_model(AlexNet, task="classification", paper=PAPER_TORCHVISION, input_size=(3, 224, 224),
                compatible_with="torchvision")
def alexnet(**kwargs) -> AlexNet:
    return AlexNet(**kwargs)
