"""Input checks shared by every model: errors say the expected shape and the actual one."""
from __future__ import annotations

import torch


def check_image_input(x: torch.Tensor, *, in_chans: int, min_size: int | tuple[int, int],
                      model_name: str, multiple_of: int | None = None) -> None:
    """Raise ``ValueError`` unless ``x`` is (N, in_chans, H, W) with H, W >= min_size.

    ``multiple_of``: H and W must also be divisible by it (e.g. a ViT's patch size).
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{model_name} expects a torch.Tensor, got {type(x).__name__}")
    min_h, min_w = (min_size, min_size) if isinstance(min_size, int) else min_size
    expected = f"(N, {in_chans}, H, W) with H >= {min_h} and W >= {min_w}"
    if x.dim() != 4:
        raise ValueError(f"{model_name} expects a 4-D input {expected}, got shape {tuple(x.shape)}")
    if x.shape[1] != in_chans:
        raise ValueError(f"{model_name} expects {in_chans} input channel(s) {expected}, got shape "
                         f"{tuple(x.shape)}; build it with in_chans={x.shape[1]} for this input")
    if x.shape[2] < min_h or x.shape[3] < min_w:
        raise ValueError(f"{model_name} input is too small: expected {expected}, got shape {tuple(x.shape)}")
    if multiple_of and (x.shape[2] % multiple_of or x.shape[3] % multiple_of):
        raise ValueError(f"{model_name} expects H and W divisible by {multiple_of}, got shape {tuple(x.shape)}")
