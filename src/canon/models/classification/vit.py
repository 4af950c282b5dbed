"""Vision Transformer (ViT): an image as a sequence of 16×16 patches through a Transformer encoder.

Paper: "An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale",
Dosovitskiy et al., 2020, arXiv:2010.11929.

Follows the paper:
    - Eq. 1: non-overlapping P×P patches, linearly projected to D dimensions (a P×P/P convolution,
      ``conv_proj``), a learned [class] token prepended, learned 1-D position embeddings added.
    - Eq. 2-3: L pre-norm encoder layers, x ← x + MSA(LN(x)); x ← x + MLP(LN(x)), the MLP being
      Linear-GELU-Linear with hidden size ``mlp_dim``; multi-head self-attention from
      :mod:`canon.layers.attention`.
    - Eq. 4: a final LayerNorm, and the classifier reads the [class] token.
    - Table 1: ViT-Base (L=12, D=768, MLP 3072, 12 heads), ViT-Large (L=24, D=1024, MLP 4096, 16 heads).
    - Section 3.2: for another resolution, the position embeddings are interpolated in 2-D over
      the patch grid (:func:`resize_pos_embed`; done on the fly when the input size differs from
      ``image_size``).

Deviates, and why:
    - torchvision's layout and choices, so its checkpoints load: LayerNorm eps=1e-6, the
      fine-tuning head (one zero-initialised linear layer, no pre-logits layer), module names
      ``encoder.layers.encoder_layer_N.{ln_1,self_attention,ln_2,mlp}``, the attention stored
      under ``torch.nn.MultiheadAttention``'s names (``in_proj_weight``, ``out_proj``), and
      torchvision's interpolation (bicubic, ``align_corners=True``).
    - ``vit_tiny_patch4_28`` is not in the paper: a small ViT for 28×28 single-channel images
      (patch 4, 6 layers, D=128, 4 heads, MLP 512; 49 patches + [class]).

Layout: ``vit_b_16`` (86,567,656 parameters), ``vit_b_32`` and ``vit_l_16`` have torchvision's
``state_dict`` keys and shapes.
"""
from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

from canon.layers.attention import MultiHeadAttention
from canon.models._validate import check_image_input
from canon.registry import register_model

__all__ = ["VisionTransformer", "EncoderBlock", "resize_pos_embed", "vit_b_16", "vit_b_32", "vit_l_16",
           "vit_tiny_patch4_28"]

PAPER = "An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale, 2020, arXiv:2010.11929"


def _pair(size) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def resize_pos_embed(pos_embed: torch.Tensor, new_grid: int | tuple[int, int], *, num_prefix_tokens: int = 1,
                     old_grid: int | tuple[int, int] | None = None, mode: str = "bicubic",
                     align_corners: bool | None = True, antialias: bool = False) -> torch.Tensor:
    """Interpolate position embeddings to another patch grid (ViT section 3.2).

    pos_embed (1, num_prefix_tokens + Gh·Gw, D), rows in raster order -> (1, num_prefix_tokens + Gh'·Gw', D).
    The prefix tokens ([class], [distillation]) are kept as they are. ``old_grid`` defaults to the
    square root of the number of patch rows. ``align_corners=True`` (torchvision) keeps the four
    corner embeddings exactly; timm's convention is ``align_corners=False, antialias=True``
    (antialiasing matters only when shrinking the grid).
    """
    if pos_embed.dim() != 3 or pos_embed.shape[0] != 1:
        raise ValueError(f"pos_embed must be (1, tokens, D), got {tuple(pos_embed.shape)}")
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    num_patches = grid.shape[1]
    if old_grid is None:
        side = math.isqrt(num_patches)
        if side * side != num_patches:
            raise ValueError(f"{num_patches} patch embeddings do not form a square grid; give old_grid")
        old_grid = (side, side)
    old_h, old_w = _pair(old_grid)
    new_h, new_w = _pair(new_grid)
    if old_h * old_w != num_patches:
        raise ValueError(f"old_grid {(old_h, old_w)} holds {old_h * old_w} patches, pos_embed has {num_patches}")
    if (old_h, old_w) == (new_h, new_w):
        return pos_embed
    dim = grid.shape[-1]
    grid = grid.reshape(1, old_h, old_w, dim).permute(0, 3, 1, 2)  # (1, D, Gh, Gw)
    smooth = mode in ("bilinear", "bicubic")
    grid = F.interpolate(grid, size=(new_h, new_w), mode=mode, align_corners=align_corners if smooth else None,
                         antialias=antialias and smooth)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_h * new_w, dim)  # (1, Gh'·Gw', D)
    return torch.cat([prefix, grid], dim=1)


class EncoderBlock(nn.Module):
    """Pre-norm Transformer layer: x + MSA(LN(x)), then + MLP(LN(x)) (ViT eq. 2-3)."""

    def __init__(self, hidden_dim: int, num_heads: int, mlp_dim: int, dropout: float, attention_dropout: float):
        super().__init__()
        self.ln_1 = nn.LayerNorm(hidden_dim, eps=1e-6)
        self.self_attention = MultiHeadAttention(hidden_dim, num_heads, dropout=attention_dropout, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.ln_2 = nn.LayerNorm(hidden_dim, eps=1e-6)
        # Indices 0 and 3 are the Linear layers, as in torchvision's MLPBlock.
        self.mlp = nn.Sequential(nn.Linear(hidden_dim, mlp_dim), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(mlp_dim, hidden_dim), nn.Dropout(dropout))
        for m in (self.mlp[0], self.mlp[3]):
            nn.init.xavier_uniform_(m.weight)
            nn.init.normal_(m.bias, std=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ln_1(x)
        y, _ = self.self_attention(y, y, y, need_weights=False)
        x = x + self.dropout(y)  # (N, S, D)
        return x + self.mlp(self.ln_2(x))


class Encoder(nn.Module):
    """Position embeddings, dropout, the encoder layers and the final LayerNorm (torchvision names)."""

    def __init__(self, seq_length: int, num_layers: int, num_heads: int, hidden_dim: int, mlp_dim: int,
                 dropout: float, attention_dropout: float):
        super().__init__()
        self.pos_embedding = nn.Parameter(torch.empty(1, seq_length, hidden_dim).normal_(std=0.02))
        self.dropout = nn.Dropout(dropout)
        self.layers = nn.Sequential(OrderedDict(
            (f"encoder_layer_{i}", EncoderBlock(hidden_dim, num_heads, mlp_dim, dropout, attention_dropout))
            for i in range(num_layers)))
        self.ln = nn.LayerNorm(hidden_dim, eps=1e-6)

    def forward(self, x: torch.Tensor, pos_embedding: torch.Tensor | None = None) -> torch.Tensor:
        pos = self.pos_embedding if pos_embedding is None else pos_embedding
        return self.ln(self.layers(self.dropout(x + pos)))  # (N, S, D)


class VisionTransformer(nn.Module):
    """ViT classifier (torchvision layout).

    Args:
        image_size: the training resolution (int or (H, W)); the position embeddings cover its patch
            grid. Other sizes (multiples of ``patch_size``) are accepted: the embeddings are
            interpolated on the fly.
        patch_size, num_layers, num_heads, hidden_dim, mlp_dim: the architecture (Table 1).
        dropout, attention_dropout: dropout after embeddings/MLP/attention output, and on the
            attention probabilities.
        num_classes: classifier outputs (0: identity, the [class] token's features).
        in_chans: input channels.
    """

    def __init__(self, *, image_size: int | tuple[int, int] = 224, patch_size: int = 16, num_layers: int = 12,
                 num_heads: int = 12, hidden_dim: int = 768, mlp_dim: int = 3072, dropout: float = 0.0,
                 attention_dropout: float = 0.0, num_classes: int = 1000, in_chans: int = 3):
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"num_classes must be an int >= 0, got {num_classes!r}")
        if not isinstance(in_chans, int) or in_chans < 1:
            raise ValueError(f"in_chans must be an int >= 1, got {in_chans!r}")
        self.image_size = _pair(image_size)
        if any(s % patch_size for s in self.image_size):
            raise ValueError(f"image_size {self.image_size} must be divisible by patch_size={patch_size}")
        if hidden_dim % num_heads:
            raise ValueError(f"hidden_dim={hidden_dim} must be divisible by num_heads={num_heads}")
        self.patch_size, self.hidden_dim = patch_size, hidden_dim
        self.num_classes, self.in_chans = num_classes, in_chans
        self.num_features = hidden_dim
        self.grid_size = (self.image_size[0] // patch_size, self.image_size[1] // patch_size)

        self.conv_proj = nn.Conv2d(in_chans, hidden_dim, kernel_size=patch_size, stride=patch_size)
        self.class_token = nn.Parameter(torch.zeros(1, 1, hidden_dim))
        seq_length = self.grid_size[0] * self.grid_size[1] + 1
        self.encoder = Encoder(seq_length, num_layers, num_heads, hidden_dim, mlp_dim, dropout, attention_dropout)
        self.heads = nn.Sequential(OrderedDict(head=self._new_head(num_classes)))

        fan_in = in_chans * patch_size * patch_size
        nn.init.trunc_normal_(self.conv_proj.weight, std=math.sqrt(1 / fan_in))
        nn.init.zeros_(self.conv_proj.bias)

    def _new_head(self, num_classes: int) -> nn.Module:
        if not num_classes:
            return nn.Identity()
        head = nn.Linear(self.hidden_dim, num_classes)
        nn.init.zeros_(head.weight)  # torchvision zero-initialises the classifier
        nn.init.zeros_(head.bias)
        return head

    def _model_name(self) -> str:
        return getattr(self, "canon_name", type(self).__name__)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, 1 + H/P·W/P, D): the encoded [class] token followed by the patches."""
        n = x.shape[0]
        x = self.conv_proj(x)  # (N, D, H/P, W/P)
        grid = tuple(x.shape[-2:])
        x = x.flatten(2).transpose(1, 2)  # (N, H/P·W/P, D), raster order
        x = torch.cat([self.class_token.expand(n, -1, -1), x], dim=1)  # (N, 1 + H/P·W/P, D)
        pos = None
        if grid != self.grid_size:
            pos = resize_pos_embed(self.encoder.pos_embedding, grid, old_grid=self.grid_size)
        return self.encoder(x, pos)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x[:, 0]  # (N, D), the [class] token (eq. 4)
        return x if pre_logits else self.heads(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image_input(x, in_chans=self.in_chans, min_size=self.patch_size, model_name=self._model_name(),
                          multiple_of=self.patch_size)
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh zero-initialised head with ``num_classes`` outputs (0: identity)."""
        if not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"num_classes must be an int >= 0, got {num_classes!r}")
        self.num_classes = num_classes
        self.heads.head = self._new_head(num_classes)


# ----------------------------------------------------------------------------- registered names
_REG = dict(task="classification", paper=PAPER, input_size=(3, 224, 224), compatible_with="torchvision")


@register_model(VisionTransformer, **_REG)
def vit_b_16(**kwargs) -> VisionTransformer:
    return VisionTransformer(**{**dict(patch_size=16, num_layers=12, num_heads=12, hidden_dim=768,
                                       mlp_dim=3072), **kwargs})


@register_model(VisionTransformer, **_REG)
def vit_b_32(**kwargs) -> VisionTransformer:
    return VisionTransformer(**{**dict(patch_size=32, num_layers=12, num_heads=12, hidden_dim=768,
                                       mlp_dim=3072), **kwargs})


@register_model(VisionTransformer, **_REG)
def vit_l_16(**kwargs) -> VisionTransformer:
    return VisionTransformer(**{**dict(patch_size=16, num_layers=24, num_heads=16, hidden_dim=1024,
                                       mlp_dim=4096), **kwargs})


@register_model(VisionTransformer, task="classification", paper=PAPER, input_size=(1, 28, 28), num_classes=10,
                compatible_with=None)
def vit_tiny_patch4_28(**kwargs) -> VisionTransformer:
    """A small ViT for 28×28 single-channel images (MNIST): defaults in_chans=1, num_classes=10."""
    return VisionTransformer(**{**dict(image_size=28, patch_size=4, num_layers=6, num_heads=4, hidden_dim=128,
                                       mlp_dim=512, in_chans=1, num_classes=10), **kwargs})
