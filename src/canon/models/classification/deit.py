"""DeiT: data-efficient image Transformers, with the distillation token and hard distillation.

Paper: "Training data-efficient image transformers & distillation through attention",
Touvron et al., 2020, arXiv:2012.12877.

Follows the paper:
    - The ViT architecture (patch embedding, [class] token, learned position embeddings, pre-norm
      encoder of multi-head self-attention and a 4× GELU MLP, final LayerNorm); Table 1's DeiT-Ti
      (D=192, 3 heads), DeiT-S (D=384, 6 heads) and DeiT-B (D=768, 12 heads), 12 layers each.
    - Section 4, "Distillation token": the distilled models append a second learned token that
      goes through the encoder like the [class] token and has its own linear head (``head_dist``).
    - Hard-label distillation (eq. 3 of section 4): L = ½·CE(ψ(Z_s), y) + ½·CE(ψ(Z_d), argmax Z_t),
      the class head learning from the label, the distillation head from the teacher's decision
      (:func:`hard_distillation_loss`). At inference the two heads' logits are averaged (the
      paper's late fusion of the two softmax inputs).
    - Soft distillation (eq. 2), the alternative the paper compares: (1−λ)·CE(ψ(Z_s), y) +
      λ·τ²·KL(ψ(Z_t/τ) ‖ ψ(Z_d/τ)), τ=3 and λ=0.1 by default (:func:`soft_distillation_loss`).
    - Stochastic depth (``drop_path_rate``) is part of the DeiT training recipe (Table 9).

Deviates, and why:
    - timm's layout and names, so timm's checkpoints load: ``patch_embed.proj``, ``cls_token``,
      ``dist_token``, ``pos_embed`` (covering the tokens and the patches), ``blocks.N.{norm1,
      attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}``, ``norm``, ``head``, ``head_dist``;
      LayerNorm eps=1e-6; timm's option names (``img_size``, ``embed_dim``, ``depth``, ``drop_rate``);
      timm's position-embedding resampling for other input sizes (bicubic, antialiased,
      ``align_corners=False``).
    - Output convention (canon's, for the training engine): with ``distilled_training=True`` and
      in training mode the distilled model returns ``{"logits": class head, "dist_logits":
      distillation head}``; otherwise it returns the average of the two heads.
    - ``deit_tiny_patch4_28`` / ``deit_tiny_distilled_patch4_28`` are not in the paper: 28×28
      single-channel variants matching ``vit_tiny_patch4_28`` (patch 4, depth 6, D=128, 4 heads, MLP 512).

Layout: every ``*_patch16_224`` name has the ``state_dict`` keys and shapes of timm's model of the
same name (e.g. deit_base_distilled_patch16_224: 87,338,192 parameters).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from canon.layers.attention import SelfAttention
from canon.models._validate import check_image_input
from canon.models.classification.vit import resize_pos_embed
from canon.registry import register_model

__all__ = ["DeiT", "Block", "Mlp", "distillation_term", "hard_distillation_loss", "soft_distillation_loss",
           "drop_path",
           "deit_tiny_patch16_224", "deit_small_patch16_224", "deit_base_patch16_224",
           "deit_tiny_distilled_patch16_224", "deit_small_distilled_patch16_224",
           "deit_base_distilled_patch16_224", "deit_tiny_patch4_28", "deit_tiny_distilled_patch4_28"]

PAPER = "Training data-efficient image transformers & distillation through attention, 2020, arXiv:2012.12877"


def _two_heads(outputs) -> tuple[torch.Tensor, torch.Tensor]:
    """(class logits, distillation logits) of a distilled DeiT's dict, or one tensor used for both."""
    if isinstance(outputs, torch.Tensor):
        return outputs, outputs  # a student with one head: the classic (Hinton) single-head form
    if not isinstance(outputs, dict) or not {"logits", "dist_logits"} <= outputs.keys():
        got = sorted(outputs) if isinstance(outputs, dict) else type(outputs).__name__
        raise TypeError("outputs must be a logits tensor or a dict with 'logits' and 'dist_logits' (a distilled "
                        f"DeiT with distilled_training=True in training mode), got {got}")
    return outputs["logits"], outputs["dist_logits"]


def distillation_term(dist_logits: torch.Tensor, teacher_logits: torch.Tensor, kind: str = "hard",
                      tau: float = 3.0) -> torch.Tensor:
    """What the distillation head learns from the teacher (DeiT section 4), a batch mean.

    ``"hard"``: CE(ψ(Z_d), argmax Z_t), the teacher's decision as a label (eq. 3).
    ``"soft"``: τ²·KL(ψ(Z_t/τ) ‖ ψ(Z_d/τ)) (eq. 2, Hinton et al.'s τ² keeps the gradient scale
    independent of τ). dist_logits, teacher_logits (N, K) -> scalar.
    """
    if teacher_logits.shape != dist_logits.shape:
        raise ValueError(f"teacher_logits must have the students' shape {tuple(dist_logits.shape)}, "
                         f"got {tuple(teacher_logits.shape)}")
    if kind == "hard":
        return F.cross_entropy(dist_logits, teacher_logits.argmax(dim=1))  # y_t = argmax_c Z_t(c)
    if kind == "soft":
        if not tau > 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        # float32 even under bfloat16 autocast: the KL compares near-equal log-probabilities
        student = F.log_softmax(dist_logits.float() / tau, dim=1)
        teacher = F.log_softmax(teacher_logits.float() / tau, dim=1)
        return tau * tau * F.kl_div(student, teacher, reduction="batchmean", log_target=True)
    raise ValueError(f"distillation kind must be 'hard' or 'soft', got {kind!r}")


def hard_distillation_loss(outputs, labels: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """DeiT's hard distillation: ½·CE(logits, labels) + ½·CE(dist_logits, argmax teacher_logits).

    outputs: ``{"logits": (N, K), "dist_logits": (N, K)}`` (a distilled DeiT in distilled training),
    or one (N, K) logits tensor for both terms; labels (N,) class indices; teacher_logits (N, K).
    Returns a scalar (mean over the batch).
    """
    logits, dist_logits = _two_heads(outputs)
    return 0.5 * F.cross_entropy(logits, labels) + 0.5 * distillation_term(dist_logits, teacher_logits, "hard")


def soft_distillation_loss(outputs, labels: torch.Tensor, teacher_logits: torch.Tensor, *, tau: float = 3.0,
                           alpha: float = 0.1) -> torch.Tensor:
    """DeiT's soft distillation (eq. 2): (1−α)·CE(logits, y) + α·τ²·KL(ψ(Z_t/τ) ‖ ψ(dist_logits/τ)).

    The paper's values are τ=3, λ(=α)=0.1. ``outputs`` as in :func:`hard_distillation_loss`.
    The KL divergence is averaged over the batch (the official code divides by N·K instead,
    which shrinks the term K-fold; canon follows the paper's formula).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    logits, dist_logits = _two_heads(outputs)
    return (1 - alpha) * F.cross_entropy(logits, labels) + alpha * distillation_term(
        dist_logits, teacher_logits, "soft", tau)


def drop_path(x: torch.Tensor, drop_prob: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero a whole residual branch per sample with probability p, scale the rest by 1/(1-p)."""
    if drop_prob == 0.0 or not training:
        return x
    keep = 1.0 - drop_prob
    mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)  # (N, 1, 1)
    return x * mask / keep


class Mlp(nn.Module):
    """Linear - GELU - dropout - Linear - dropout (timm's ``fc1``/``fc2``)."""

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class Block(nn.Module):
    """Pre-norm Transformer layer: x + MSA(LN(x)), then x + MLP(LN(x)), each branch with stochastic depth."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, drop: float, attn_drop: float,
                 drop_path_rate: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = SelfAttention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=drop)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)
        self.drop_path_rate = drop_path_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + drop_path(self.attn(self.norm1(x)), self.drop_path_rate, self.training)  # (N, S, D)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_path_rate, self.training)


class PatchEmbed(nn.Module):
    """P×P/P convolution: (N, C, H, W) -> (N, H/P·W/P, D) in raster order (timm's ``patch_embed.proj``)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class DeiT(nn.Module):
    """DeiT / ViT classifier in timm's layout, optionally with the distillation token.

    Args:
        img_size: training resolution; other sizes (multiples of ``patch_size``) interpolate the
            position embeddings on the fly.
        patch_size, embed_dim, depth, num_heads, mlp_ratio, qkv_bias: the architecture.
        drop_rate, attn_drop_rate, drop_path_rate: dropout on embeddings/projections, on attention
            probabilities, and stochastic depth (the same rate for every block).
        distilled: add the distillation token and ``head_dist``.
        distilled_training: with ``distilled``, training-mode forward returns both heads' logits
            in a dict (for :func:`hard_distillation_loss`); otherwise their average.
        num_classes: classifier outputs (0: identity heads). in_chans: input channels.
    """

    def __init__(self, *, img_size: int = 224, patch_size: int = 16, embed_dim: int = 768, depth: int = 12,
                 num_heads: int = 12, mlp_ratio: float = 4.0, qkv_bias: bool = True, drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0, distilled: bool = False,
                 distilled_training: bool = False, num_classes: int = 1000, in_chans: int = 3):
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"num_classes must be an int >= 0, got {num_classes!r}")
        if not isinstance(in_chans, int) or in_chans < 1:
            raise ValueError(f"in_chans must be an int >= 1, got {in_chans!r}")
        if img_size % patch_size:
            raise ValueError(f"img_size={img_size} must be divisible by patch_size={patch_size}")
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim={embed_dim} must be divisible by num_heads={num_heads}")
        if distilled_training and not distilled:
            raise ValueError("distilled_training=True needs distilled=True (a distillation token and head)")
        self.num_classes, self.in_chans = num_classes, in_chans
        self.patch_size, self.embed_dim, self.num_features = patch_size, embed_dim, embed_dim
        self.distilled, self.distilled_training = distilled, distilled_training
        self.grid_size = (img_size // patch_size, img_size // patch_size)
        self.num_prefix_tokens = 2 if distilled else 1

        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if distilled else None
        num_tokens = self.num_prefix_tokens + self.grid_size[0] * self.grid_size[1]
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        self.blocks = nn.Sequential(*(Block(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate,
                                            drop_path_rate) for _ in range(depth)))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes else nn.Identity()
        self.head_dist = (nn.Linear(embed_dim, num_classes) if num_classes else nn.Identity()) if distilled else None

        # timm's initialisation: truncated normal (std 0.02) embeddings and linear weights, zero biases.
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        if distilled:
            nn.init.trunc_normal_(self.dist_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def _model_name(self) -> str:
        return getattr(self, "canon_name", type(self).__name__)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, prefix + H/P·W/P, D): [class], ([distillation],) then the patches."""
        grid = (x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size)
        x = self.patch_embed(x)  # (N, H/P·W/P, D)
        n = x.shape[0]
        tokens = [self.cls_token.expand(n, -1, -1)]
        if self.distilled:
            tokens.append(self.dist_token.expand(n, -1, -1))
        x = torch.cat(tokens + [x], dim=1)  # (N, prefix + H/P·W/P, D)
        pos = self.pos_embed
        if grid != self.grid_size:
            # timm's convention: bicubic, align_corners=False, antialiased.
            pos = resize_pos_embed(pos, grid, num_prefix_tokens=self.num_prefix_tokens, old_grid=self.grid_size,
                                   align_corners=False, antialias=True)
        x = self.blocks(self.pos_drop(x + pos))
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False):
        if pre_logits:
            return x[:, 0]  # (N, D)
        logits = self.head(x[:, 0])  # (N, K) from the [class] token
        if not self.distilled:
            return logits
        dist_logits = self.head_dist(x[:, 1])  # (N, K) from the [distillation] token
        if self.distilled_training and self.training:
            return {"logits": logits, "dist_logits": dist_logits}
        return (logits + dist_logits) / 2

    def forward(self, x: torch.Tensor):
        check_image_input(x, in_chans=self.in_chans, min_size=self.patch_size, model_name=self._model_name(),
                          multiple_of=self.patch_size)
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """Fresh ``head`` (and ``head_dist``) with ``num_classes`` outputs (0: identity)."""
        if not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"num_classes must be an int >= 0, got {num_classes!r}")
        self.num_classes = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes else nn.Identity()
        if self.distilled:
            self.head_dist = nn.Linear(self.embed_dim, num_classes) if num_classes else nn.Identity()


# ----------------------------------------------------------------------------- registered names
_REG = dict(task="classification", paper=PAPER, input_size=(3, 224, 224), compatible_with="timm")
_TINY = dict(patch_size=16, embed_dim=192, depth=12, num_heads=3)
_SMALL = dict(patch_size=16, embed_dim=384, depth=12, num_heads=6)
_BASE = dict(patch_size=16, embed_dim=768, depth=12, num_heads=12)
_MINI = dict(img_size=28, patch_size=4, embed_dim=128, depth=6, num_heads=4, in_chans=1, num_classes=10)
_REG_MINI = dict(task="classification", paper=PAPER, input_size=(1, 28, 28), num_classes=10, compatible_with=None)


@register_model(DeiT, **_REG)
def deit_tiny_patch16_224(**kwargs) -> DeiT:
    return DeiT(**{**_TINY, **kwargs})


@register_model(DeiT, **_REG)
def deit_small_patch16_224(**kwargs) -> DeiT:
    return DeiT(**{**_SMALL, **kwargs})


@register_model(DeiT, **_REG)
def deit_base_patch16_224(**kwargs) -> DeiT:
    return DeiT(**{**_BASE, **kwargs})


@register_model(DeiT, **_REG)
def deit_tiny_distilled_patch16_224(**kwargs) -> DeiT:
    return DeiT(**{**_TINY, "distilled": True, **kwargs})


@register_model(DeiT, **_REG)
def deit_small_distilled_patch16_224(**kwargs) -> DeiT:
    return DeiT(**{**_SMALL, "distilled": True, **kwargs})


@register_model(DeiT, **_REG)
def deit_base_distilled_patch16_224(**kwargs) -> DeiT:
    return DeiT(**{**_BASE, "distilled": True, **kwargs})


@register_model(DeiT, **_REG_MINI)
def deit_tiny_patch4_28(**kwargs) -> DeiT:
    """28×28 single-channel DeiT matching ``vit_tiny_patch4_28``: defaults in_chans=1, num_classes=10."""
    return DeiT(**{**_MINI, **kwargs})


@register_model(DeiT, **_REG_MINI)
def deit_tiny_distilled_patch4_28(**kwargs) -> DeiT:
    """The distilled form of ``deit_tiny_patch4_28`` (distillation token and head)."""
    return DeiT(**{**_MINI, "distilled": True, **kwargs})
