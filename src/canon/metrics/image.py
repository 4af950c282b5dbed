"""Image-quality metrics: MSE, RMSE, MAE, PSNR, SSIM and MS-SSIM on (N, C, H, W) tensors.

Papers:
- SSIM: Wang, Bovik, Sheikh, Simoncelli, "Image Quality Assessment: From Error Visibility to
  Structural Similarity", IEEE TIP 2004 (no arXiv id).
- MS-SSIM: Wang, Simoncelli, Bovik, "Multi-scale Structural Similarity for Image Quality
  Assessment", Asilomar 2003 (no arXiv id).

Follows the paper:
- SSIM uses an 11x11 circular-symmetric Gaussian window with sigma = 1.5, K1 = 0.01, K2 = 0.03,
  population (not sample) statistics, and the mean of the SSIM map (MSSIM).
- MS-SSIM uses M = 5 scales with the 2003 exponents (0.0448, 0.2856, 0.3001, 0.2363, 0.1333):
  the contrast-structure term at scales 1..M-1 and the full SSIM at scale M, with a low-pass
  filter and a factor-2 downsampling between scales.

Deviates, and why:
- The SSIM map is taken over the *valid* region only (no padding): scikit-image computes it with
  reflect padding and then crops the border of half a window, which is the same numbers.
- Colour images: each channel gets its own SSIM and the channels are averaged, as scikit-image
  does with ``channel_axis``; the paper defines SSIM on greyscale images.
- MS-SSIM's low-pass-and-downsample is a 2x2 average pool (odd last rows and columns are
  dropped), as in Wang's reference MATLAB code, torchmetrics and pytorch-msssim. Negative
  contrast-structure values are clamped to 0 before the fractional powers (pytorch-msssim does
  the same), since a negative base would make them undefined.

``data_range`` (the value range L in C1 = (K1 L)^2, C2 = (K2 L)^2 and PSNR = 10 log10(L^2 / MSE)):
when ``None``, ``uint8`` inputs use 255 (scikit-image's dtype rule); any other dtype uses the range
of the data over the whole batch, as torchmetrics does: ``target.max() - target.min()`` for PSNR
and the larger of the ``preds`` and ``target`` ranges for SSIM and MS-SSIM. Pass it explicitly
whenever you know it (1.0 for images in [0, 1]).

Batches: ``reduction="mean"`` (the default) averages the per-image values; ``reduction="none"``
returns one value per image, shape (N,). An empty batch (N = 0) gives an empty (0,) tensor with
``"none"`` and NaN with ``"mean"`` (the mean of no values), as ``torch.mean`` does.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["mse", "rmse", "mae", "psnr", "ssim", "ms_ssim", "MS_SSIM_WEIGHTS"]

# Wang, Simoncelli & Bovik 2003, Table 1: beta_j = gamma_j for scales 1..5 (alpha_5 = beta_5).
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)

_REDUCTIONS = ("mean", "none")


# ----------------------------------------------------------------------------- input checks
def _check_pair(preds: torch.Tensor, target: torch.Tensor, name: str, *, images: bool) -> None:
    """Raise unless ``preds`` and ``target`` are tensors of one shape ((N, C, H, W) if ``images``)."""
    for arg, value in (("preds", preds), ("target", target)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name}: {arg} must be a torch.Tensor, got {type(value).__name__}")
    if preds.shape != target.shape:
        raise ValueError(f"{name}: preds and target must have the same shape, got "
                         f"{tuple(preds.shape)} and {tuple(target.shape)}")
    if images and preds.dim() != 4:
        raise ValueError(f"{name} expects (N, C, H, W) tensors, got shape {tuple(preds.shape)}; "
                         f"add the missing axes with x[None] (batch) or x[:, None] (channel)")
    if preds.is_complex() or target.is_complex():
        raise TypeError(f"{name}: complex tensors are not supported")


def _check_reduction(reduction: str, name: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{name}: reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def _compute_dtype(preds: torch.Tensor, target: torch.Tensor) -> torch.dtype:
    """The float dtype the maths runs in: the inputs' float dtype, float32 for integers/halves."""
    dtype = torch.promote_types(preds.dtype, target.dtype)
    if dtype in (torch.float64, torch.float32):
        return dtype
    return torch.float32


def _reduce(per_image: torch.Tensor, reduction: str) -> torch.Tensor:
    return per_image.mean() if reduction == "mean" else per_image


def _resolve_data_range(preds: torch.Tensor, target: torch.Tensor, data_range, name: str, *,
                        use_preds: bool) -> float | torch.Tensor:
    """The value range L: given, 255 for uint8 inputs, else the range of the data (see module doc)."""
    if data_range is not None:
        value = float(data_range)
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"{name}: data_range must be a positive finite number, got {data_range!r}")
        return value
    if preds.dtype == torch.uint8 and target.dtype == torch.uint8:
        return 255.0
    if target.numel() == 0:
        return 1.0  # nothing will be computed with it
    dtype = _compute_dtype(preds, target)
    target_range = target.detach().max().to(dtype) - target.detach().min().to(dtype)
    value = target_range
    if use_preds:
        value = torch.maximum(target_range, preds.detach().max().to(dtype) - preds.detach().min().to(dtype))
    if value <= 0:
        raise ValueError(f"{name}: cannot infer data_range from constant images (range 0); "
                         f"pass data_range explicitly, e.g. data_range=1.0 for images in [0, 1]")
    return value


# ----------------------------------------------------------------------------- pixel errors
def mse(preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over all elements of two same-shape tensors (any shape).

    Returns a 0-d tensor; NaN when the tensors are empty.
    """
    _check_pair(preds, target, "mse", images=False)
    dtype = _compute_dtype(preds, target)
    return (preds.to(dtype) - target.to(dtype)).pow(2).mean()


def rmse(preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Root mean squared error, sqrt(MSE), over all elements (any shape); NaN when empty."""
    return mse(preds, target).sqrt()


def mae(preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over all elements of two same-shape tensors; NaN when empty."""
    _check_pair(preds, target, "mae", images=False)
    dtype = _compute_dtype(preds, target)
    return (preds.to(dtype) - target.to(dtype)).abs().mean()


def psnr(preds: torch.Tensor, target: torch.Tensor, data_range: float | None = None, *,
         reduction: str = "mean") -> torch.Tensor:
    """Peak signal-to-noise ratio in dB, per image, on (N, C, H, W) tensors.

    PSNR = 10 log10(L^2 / MSE), MSE over each image's C x H x W values, L = ``data_range``
    (see the module docstring for ``None``). Identical images give +inf.
    Returns a 0-d tensor (``reduction="mean"``) or (N,) (``"none"``).
    """
    _check_pair(preds, target, "psnr", images=True)
    _check_reduction(reduction, "psnr")
    data_range = _resolve_data_range(preds, target, data_range, "psnr", use_preds=False)
    dtype = _compute_dtype(preds, target)
    err = (preds.to(dtype) - target.to(dtype)).pow(2).flatten(1).mean(dim=1)  # (N,)
    per_image = 10 * torch.log10(torch.as_tensor(data_range, dtype=dtype) ** 2 / err)
    return _reduce(per_image, reduction)


# ----------------------------------------------------------------------------- SSIM
def gaussian_window_1d(win_size: int = 11, sigma: float = 1.5, *, dtype=torch.float32) -> torch.Tensor:
    """The normalised 1-D Gaussian g with g[i] ~ exp(-(i - r)^2 / (2 sigma^2)), r = win_size // 2.

    Returns (win_size,). The 2-D SSIM window is its outer product with itself.
    """
    if not isinstance(win_size, int) or win_size < 1 or win_size % 2 == 0:
        raise ValueError(f"win_size must be a positive odd integer, got {win_size!r}")
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma!r}")
    offsets = torch.arange(win_size, dtype=torch.float64) - win_size // 2
    g = torch.exp(-offsets ** 2 / (2 * sigma ** 2))
    return (g / g.sum()).to(dtype)


def _filter_valid_1d(x: torch.Tensor, taps: list[float], dim: int) -> torch.Tensor:
    """Correlate ``x`` with a symmetric window along ``dim`` (2 or 3), valid region only.

    out[i] = g[r] x[i + r] + sum_{j<r} g[j] (x[i + j] + x[i + 2r - j]), r = len(taps) // 2: the
    window's symmetry halves the multiplications. Shrinks ``dim`` by len(taps) - 1.
    """
    k = len(taps)
    r, size = k // 2, x.shape[dim] - k + 1
    out = x.narrow(dim, r, size) * taps[r]
    for j in range(r):
        out.add_(x.narrow(dim, j, size) + x.narrow(dim, k - 1 - j, size), alpha=taps[j])
    return out


# Planes filtered together: about 2^18 values (1 MiB in float32) stay in the CPU cache across
# the 2 x 6 passes. On one thread this was about 2x faster than filtering the whole batch at
# once, as fast as torch's depthwise conv2d in float32 and 2-8x faster in float64 (conv2d has no
# fast float64 path on CPU); benchmarks/bench_metrics.py times it beside scikit-image.
_VALUES_PER_CHUNK = 2 ** 18


def _filter_valid(x: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filtering of every plane of (N, P, H, W), valid region only.

    The 2-D window is the outer product of the symmetric 1-D ``window`` (k taps) with itself, so
    filtering down the columns and then along the rows is the same as the 2-D correlation.
    Returns (N, P, H - k + 1, W - k + 1).
    """
    n, planes, h, w = x.shape
    taps = window.tolist()
    if n * planes == 0:
        return x.new_zeros(n, planes, h - len(taps) + 1, w - len(taps) + 1)
    flat = x.reshape(n * planes, 1, h, w)
    step = max(1, _VALUES_PER_CHUNK // (h * w))
    chunks = [_filter_valid_1d(_filter_valid_1d(flat[i:i + step], taps, 2), taps, 3)  # H, then W
              for i in range(0, n * planes, step)]
    out = chunks[0] if len(chunks) == 1 else torch.cat(chunks)
    return out.reshape(n, planes, out.shape[2], out.shape[3])


def _ssim_and_cs(preds: torch.Tensor, target: torch.Tensor, window: torch.Tensor, c1: float,
                 c2: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel means of the SSIM map and of its contrast-structure part over the valid region.

    ``preds``, ``target``: (N, C, H, W) floats already divided by the data range, so that
    c1 = K1^2 and c2 = K2^2. Returns two (N, C) tensors.
    """
    c = preds.shape[1]
    # One filtering pass over the five moment images: mu_x, mu_y, E[x^2], E[y^2], E[xy].
    x, y = preds, target
    moments = torch.cat([x, y, x * x, y * y, x * y], dim=1)  # (N, 5C, H, W)
    mu_x, mu_y, e_xx, e_yy, e_xy = _filter_valid(moments, window).split(c, dim=1)
    mu_xy = mu_x * mu_y
    mu_sq = mu_x * mu_x + mu_y * mu_y
    # sigma_xy = E[xy] - mu_x mu_y;  sigma_x^2 + sigma_y^2 = E[x^2] + E[y^2] - mu_x^2 - mu_y^2
    cs_map = (2 * (e_xy - mu_xy) + c2) / (e_xx + e_yy - mu_sq + c2)  # c(x, y) s(x, y)
    luminance = (2 * mu_xy + c1) / (mu_sq + c1)  # l(x, y)
    ssim_map = luminance * cs_map
    return ssim_map.flatten(2).mean(dim=2), cs_map.flatten(2).mean(dim=2)


def _prepare(preds, target, data_range, name, win_size, sigma):
    """Scale both images to unit range in the compute dtype and build the window."""
    data_range = _resolve_data_range(preds, target, data_range, name, use_preds=True)
    dtype = _compute_dtype(preds, target)
    preds, target = preds.to(dtype), target.to(dtype)
    if not (isinstance(data_range, float) and data_range == 1.0):
        preds, target = preds / data_range, target / data_range
    return preds, target, gaussian_window_1d(win_size, sigma, dtype=dtype)


def ssim(preds: torch.Tensor, target: torch.Tensor, data_range: float | None = None, *,
         reduction: str = "mean", win_size: int = 11, sigma: float = 1.5, k1: float = 0.01,
         k2: float = 0.03) -> torch.Tensor:
    """Structural similarity (MSSIM of Wang et al. 2004) of (N, C, H, W) images, H, W >= win_size.

    Each channel's SSIM map is averaged over the valid region, then the channels are averaged.
    Equals ``skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=L, channel_axis=0)`` per image. Differentiable.
    Returns a 0-d tensor (``reduction="mean"``) or (N,) (``"none"``).
    """
    _check_pair(preds, target, "ssim", images=True)
    _check_reduction(reduction, "ssim")
    if min(preds.shape[-2:]) < win_size:
        raise ValueError(f"ssim needs H and W >= win_size = {win_size}, got shape {tuple(preds.shape)}")
    preds, target, window = _prepare(preds, target, data_range, "ssim", win_size, sigma)
    ssim_per_channel, _ = _ssim_and_cs(preds, target, window, k1 ** 2, k2 ** 2)  # (N, C)
    return _reduce(ssim_per_channel.mean(dim=1), reduction)


def ms_ssim(preds: torch.Tensor, target: torch.Tensor, data_range: float | None = None, *,
            reduction: str = "mean", weights: tuple[float, ...] = MS_SSIM_WEIGHTS, win_size: int = 11,
            sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """Multi-scale SSIM (Wang et al. 2003) of (N, C, H, W) images.

    MS-SSIM = SSIM_M^w_M * prod_{j<M} CS_j^w_j per channel, channels averaged, with M = len(weights)
    scales; the smallest scale must still hold a window, so H, W >= win_size * 2^(M-1)
    (176 for the defaults). Returns a 0-d tensor (``reduction="mean"``) or (N,) (``"none"``).
    """
    _check_pair(preds, target, "ms_ssim", images=True)
    _check_reduction(reduction, "ms_ssim")
    if len(weights) < 1:
        raise ValueError("ms_ssim: weights must hold one exponent per scale, got none")
    min_size = win_size * 2 ** (len(weights) - 1)
    if min(preds.shape[-2:]) < min_size:
        raise ValueError(f"ms_ssim with {len(weights)} scales and win_size={win_size} needs H and W >= "
                         f"{min_size}, got shape {tuple(preds.shape)}; use ssim, fewer weights or a "
                         f"smaller win_size for small images")
    preds, target, window = _prepare(preds, target, data_range, "ms_ssim", win_size, sigma)
    exponents = torch.as_tensor(weights, dtype=preds.dtype)
    value = torch.ones(preds.shape[:2], dtype=preds.dtype)  # (N, C)
    for scale, exponent in enumerate(exponents):
        ssim_per_channel, cs_per_channel = _ssim_and_cs(preds, target, window, k1 ** 2, k2 ** 2)
        if scale < len(weights) - 1:
            value = value * cs_per_channel.clamp(min=0) ** exponent
            preds, target = F.avg_pool2d(preds, 2), F.avg_pool2d(target, 2)  # low-pass, downsample by 2
        else:
            value = value * ssim_per_channel.clamp(min=0) ** exponent
    return _reduce(value.mean(dim=1), reduction)
