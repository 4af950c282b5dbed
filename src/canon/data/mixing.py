"""Batch-mixing augmentation: mixup and CutMix, with the soft targets they train against.

H. Zhang, M. Cisse, Y. N. Dauphin, D. Lopez-Paz, "mixup: Beyond Empirical Risk Minimization",
ICLR 2018, arXiv:1710.09412. S. Yun, D. Han, S. J. Oh, S. Chun, J. Choe, Y. Yoo, "CutMix:
Regularization Strategy to Train Strong Classifiers with Localizable Features", ICCV 2019,
arXiv:1905.04899.

Follows the papers:
  - one ``λ ~ Beta(α, α)`` per batch, and the batch paired with a random permutation of itself
    (mixup's section 2 mixes a minibatch with a shuffled copy of it from the same loader);
  - mixup: ``x̃ = λ·x_i + (1−λ)·x_j``, ``ỹ = λ·y_i + (1−λ)·y_j`` (eq. 1);
  - CutMix: a box of size ``W·√(1−λ) × H·√(1−λ)`` centred uniformly at random, clipped to the image,
    filled from the partner; ``λ`` is then recomputed as the share of pixels kept (eq. 1–2 and
    its "clipped box" remark), so the targets match the pixels.

Deviates, and why:
  - with both enabled, each batch uses one of the two, CutMix with probability ``switch_prob``
    (DeiT's recipe, as timm's ``Mixup`` does it); the papers use one or the other.

The loss against soft targets is ``torch.nn.functional.cross_entropy(logits, targets)``, which
equals ``λ·CE(logits, y_i) + (1−λ)·CE(logits, y_j)`` (mixup's eq. 1 applied to the loss).
"""
from __future__ import annotations

import math

import torch

__all__ = ["BatchMixer", "mixup", "cutmix", "cutmix_box"]


def _check_alpha(alpha: float, name: str) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha < 0:
        raise ValueError(f"{name} must be a number >= 0 (0 turns it off), got {alpha!r}")
    return float(alpha)


def _soft_targets(labels: torch.Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    if labels.dim() != 1 or labels.is_floating_point():
        raise ValueError(f"labels must be a 1-D tensor of class indices, got dtype {labels.dtype} "
                         f"and shape {tuple(labels.shape)}")
    return torch.nn.functional.one_hot(labels, num_classes).to(dtype)


def mixup(images: torch.Tensor, labels: torch.Tensor, num_classes: int, lam: float,
          permutation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(λ·x + (1−λ)·x[perm], λ·onehot(y) + (1−λ)·onehot(y[perm]))``."""
    targets = _soft_targets(labels, num_classes, images.dtype)
    mixed = lam * images + (1.0 - lam) * images[permutation]
    return mixed, lam * targets + (1.0 - lam) * targets[permutation]


def cutmix_box(height: int, width: int, lam: float, generator: torch.Generator | None = None
               ) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` of CutMix's box for ``λ``, clipped to the image (may be empty)."""
    cut = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * cut), int(width * cut)
    cy = int(torch.randint(height, (1,), generator=generator))
    cx = int(torch.randint(width, (1,), generator=generator))
    top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
    left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
    return top, bottom, left, right


def cutmix(images: torch.Tensor, labels: torch.Tensor, num_classes: int, box: tuple[int, int, int, int],
           permutation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Paste ``box`` from ``images[perm]`` into ``images``; targets weighted by the pixels kept.

    Returns ``(mixed images, soft targets, λ)`` with ``λ = 1 − box area / image area``."""
    top, bottom, left, right = box
    height, width = images.shape[-2:]
    mixed = images.clone()
    mixed[..., top:bottom, left:right] = images[permutation][..., top:bottom, left:right]
    lam = 1.0 - (bottom - top) * (right - left) / (height * width)
    targets = _soft_targets(labels, num_classes, images.dtype)
    return mixed, lam * targets + (1.0 - lam) * targets[permutation], lam


class BatchMixer:
    """Mix each training batch with mixup (``mixup_alpha``) and/or CutMix (``cutmix_alpha``).

    ``mixer(images, labels) -> (images, soft targets (N, num_classes))``. Every draw comes from
    torch's global generator, so a resumed run, which restores it, mixes exactly as an
    uninterrupted one. With both alphas 0 the mixer is off (``bool(mixer)`` is False).
    """

    def __init__(self, num_classes: int, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0,
                 switch_prob: float = 0.5):
        self.mixup_alpha = _check_alpha(mixup_alpha, "--mixup")
        self.cutmix_alpha = _check_alpha(cutmix_alpha, "--cutmix")
        if not 0.0 <= switch_prob <= 1.0:
            raise ValueError(f"switch_prob must be in [0, 1], got {switch_prob}")
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
        self.num_classes, self.switch_prob = num_classes, switch_prob

    def __bool__(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0

    @staticmethod
    def _beta(alpha: float) -> float:
        concentration = torch.tensor(alpha, dtype=torch.float64)
        return float(torch.distributions.Beta(concentration, concentration).sample())

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if images.dim() != 4 or len(images) != len(labels):
            raise ValueError(f"expected images (N, C, H, W) and N labels, got {tuple(images.shape)} and "
                             f"{tuple(labels.shape)}")
        if not self:
            return images, _soft_targets(labels, self.num_classes, images.dtype)
        use_cutmix = self.cutmix_alpha > 0 and (
            self.mixup_alpha == 0 or float(torch.rand(())) < self.switch_prob)
        permutation = torch.randperm(len(images))
        if use_cutmix:
            lam = self._beta(self.cutmix_alpha)
            box = cutmix_box(*images.shape[-2:], lam)
            mixed, targets, _ = cutmix(images, labels, self.num_classes, box, permutation)
            return mixed, targets
        return mixup(images, labels, self.num_classes, self._beta(self.mixup_alpha), permutation)
