"""Image-quality metrics against scikit-image on real photographs, and MS-SSIM against the paper.

References: ``skimage.metrics.peak_signal_noise_ratio`` and ``structural_similarity`` (Gaussian
window, sigma 1.5, population covariance, explicit data_range), run on scikit-image's bundled
photographs after three degradations: additive Gaussian noise, Gaussian blur (scipy) and JPEG
compression (Pillow). MS-SSIM is checked against Wang, Simoncelli & Bovik 2003 transcribed below
with scipy's Gaussian filter and numpy block means.
"""
from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

skimage_data = pytest.importorskip("skimage.data")
skimage_metrics = pytest.importorskip("skimage.metrics")
ndimage = pytest.importorskip("scipy.ndimage")
Image = pytest.importorskip("PIL.Image")

from canon.metrics import MS_SSIM_WEIGHTS, mae, ms_ssim, mse, psnr, rmse, ssim  # noqa: E402

PHOTOS = ("astronaut", "camera", "coffee", "chelsea")
DEGRADATIONS = ("noise", "blur", "jpeg")


def _photo(name: str, crop: tuple[int, int] | None = (160, 224)) -> np.ndarray:
    """(H, W, C) uint8 photograph from scikit-image (greyscale gets C = 1).

    ``crop``: keep a centred (h, w) crop, to keep the default test run fast on a small shared
    machine; ``None`` keeps the whole photograph (the slow-marked tests).
    """
    image = getattr(skimage_data, name)()
    image = image[:, :, None] if image.ndim == 2 else image
    if crop is not None:
        top, left = (image.shape[0] - crop[0]) // 2, (image.shape[1] - crop[1]) // 2
        image = image[top:top + crop[0], left:left + crop[1]]
    return np.ascontiguousarray(image)


def _degrade(image: np.ndarray, kind: str, seed: int = 0) -> np.ndarray:
    """(H, W, C) uint8 -> a degraded (H, W, C) uint8 copy."""
    if kind == "noise":
        rng = np.random.default_rng(seed)
        return np.clip(image + rng.normal(0, 12.0, image.shape), 0, 255).round().astype(np.uint8)
    if kind == "blur":
        return np.clip(ndimage.gaussian_filter(image.astype(np.float64), sigma=(2.0, 2.0, 0)), 0, 255
                       ).round().astype(np.uint8)
    if kind == "jpeg":
        mode = "L" if image.shape[2] == 1 else "RGB"
        buffer = io.BytesIO()
        Image.fromarray(image.squeeze(2) if mode == "L" else image, mode).save(buffer, "JPEG", quality=20)
        decoded = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert(mode))
        return decoded[:, :, None] if mode == "L" else decoded
    raise ValueError(kind)


def _nchw(image: np.ndarray, dtype=torch.float64) -> torch.Tensor:
    return torch.from_numpy(np.array(image.transpose(2, 0, 1)))[None].to(dtype)


def _skimage_ssim(a: np.ndarray, b: np.ndarray, data_range: float) -> float:
    return skimage_metrics.structural_similarity(
        a.astype(np.float64), b.astype(np.float64), data_range=data_range, channel_axis=2,
        gaussian_weights=True, sigma=1.5, use_sample_covariance=False)


def _check_against_skimage(name: str, image: np.ndarray) -> None:
    degraded = {kind: _degrade(image, kind) for kind in DEGRADATIONS}
    target = _nchw(image)
    for kind, bad in degraded.items():
        preds = _nchw(bad)
        expected_psnr = skimage_metrics.peak_signal_noise_ratio(image, bad, data_range=255)
        expected_ssim = _skimage_ssim(image, bad, 255.0)
        assert abs(psnr(preds, target, data_range=255).item() - expected_psnr) < 1e-4, (name, kind)
        assert abs(ssim(preds, target, data_range=255).item() - expected_ssim) < 1e-4, (name, kind)
        # float32 in [0, 1] (the usual network output) agrees within the same tolerance
        got32 = ssim(preds.float() / 255, target.float() / 255, data_range=1.0).item()
        assert abs(got32 - expected_ssim) < 1e-4, (name, kind, got32, expected_ssim)
        assert abs(psnr(preds.float() / 255, target.float() / 255, data_range=1.0).item() - expected_psnr) < 1e-4
        # uint8 with data_range=None uses 255, as scikit-image's dtype rule does
        assert abs(ssim(_nchw(bad, torch.uint8), _nchw(image, torch.uint8)).item() - expected_ssim) < 1e-4
        assert abs(psnr(_nchw(bad, torch.uint8), _nchw(image, torch.uint8)).item() - expected_psnr) < 1e-4


@pytest.mark.parametrize("name", PHOTOS)
def test_psnr_and_ssim_equal_skimage_on_degraded_photographs(name):
    _check_against_skimage(name, _photo(name))


@pytest.mark.slow
@pytest.mark.parametrize("name", PHOTOS)
def test_psnr_and_ssim_equal_skimage_on_whole_degraded_photographs(name):
    _check_against_skimage(name, _photo(name, crop=None))


def test_batch_reduction_none_gives_one_value_per_image():
    image = _photo("chelsea")
    bads = [_degrade(image, kind) for kind in DEGRADATIONS]
    preds = torch.cat([_nchw(b) for b in bads])  # (3, 3, H, W)
    target = _nchw(image).expand_as(preds)
    per_image_ssim = ssim(preds, target, data_range=255, reduction="none")
    per_image_psnr = psnr(preds, target, data_range=255, reduction="none")
    assert per_image_ssim.shape == per_image_psnr.shape == (3,)
    expected_ssim = [_skimage_ssim(image, b, 255.0) for b in bads]
    expected_psnr = [skimage_metrics.peak_signal_noise_ratio(image, b, data_range=255) for b in bads]
    np.testing.assert_allclose(per_image_ssim.numpy(), expected_ssim, atol=1e-4)
    np.testing.assert_allclose(per_image_psnr.numpy(), expected_psnr, atol=1e-4)
    assert abs(ssim(preds, target, data_range=255).item() - np.mean(expected_ssim)) < 1e-4
    assert abs(psnr(preds, target, data_range=255).item() - np.mean(expected_psnr)) < 1e-4


def test_float_data_range_none_uses_the_data_range_like_torchmetrics():
    image = _photo("camera")
    bad = _degrade(image, "noise")
    preds, target = _nchw(bad) / 255 * 0.8, _nchw(image) / 255 * 0.9  # ranges differ on purpose
    target_range = (target.max() - target.min()).item()
    both_range = max(target_range, (preds.max() - preds.min()).item())
    assert psnr(preds, target).item() == pytest.approx(
        skimage_metrics.peak_signal_noise_ratio(target.numpy(), preds.numpy(), data_range=target_range), abs=1e-6)
    assert ssim(preds, target).item() == pytest.approx(
        _skimage_ssim(target[0].numpy().transpose(1, 2, 0), preds[0].numpy().transpose(1, 2, 0), both_range),
        abs=1e-6)


def test_pixel_errors_equal_numpy():
    image = _photo("coffee")
    bad = _degrade(image, "jpeg")
    diff = bad.astype(np.float64) - image.astype(np.float64)
    preds, target = _nchw(bad), _nchw(image)
    assert mse(preds, target).item() == pytest.approx(np.mean(diff ** 2), rel=1e-12)
    assert rmse(preds, target).item() == pytest.approx(math.sqrt(np.mean(diff ** 2)), rel=1e-12)
    assert mae(preds, target).item() == pytest.approx(np.mean(np.abs(diff)), rel=1e-12)
    assert mse(preds, target).item() == pytest.approx(skimage_metrics.mean_squared_error(image, bad), rel=1e-12)


# ----------------------------------------------------------------------------- MS-SSIM
def _paper_ms_ssim(x: np.ndarray, y: np.ndarray, data_range: float) -> float:
    """Wang, Simoncelli & Bovik 2003, eq. (7), on one greyscale image pair (float64 transcription).

    Per scale j: mu, sigma from an 11x11 Gaussian window (sigma 1.5), valid region only;
    c_j s_j = mean((2 sigma_xy + C2) / (sigma_x^2 + sigma_y^2 + C2)); at the last scale the
    luminance term l_M = (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1) joins in. Between scales a
    2x2 mean (low-pass) and keeping every second sample (downsample by 2).
    MS-SSIM = [l_M]^a_M prod_j [c_j s_j]^b_j with a_M = b_M and the 2003 exponents.
    """
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    x, y = x.astype(np.float64), y.astype(np.float64)
    result = 1.0
    for j, weight in enumerate(MS_SSIM_WEIGHTS):
        def blur(a):  # 11 taps: radius = int(3.5 * 1.5 + 0.5) = 5; crop the 5-pixel border (valid region)
            return ndimage.gaussian_filter(a, sigma=1.5, truncate=3.5, mode="reflect")[5:-5, 5:-5]
        mu_x, mu_y = blur(x), blur(y)
        var_x, var_y, cov = blur(x * x) - mu_x ** 2, blur(y * y) - mu_y ** 2, blur(x * y) - mu_x * mu_y
        cs_map = (2 * cov + c2) / (var_x + var_y + c2)
        if j < len(MS_SSIM_WEIGHTS) - 1:
            result *= max(cs_map.mean(), 0.0) ** weight
            h, w = (x.shape[0] // 2) * 2, (x.shape[1] // 2) * 2
            x = x[:h, :w].reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
            y = y[:h, :w].reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
        else:
            luminance = (2 * mu_x * mu_y + c1) / (mu_x ** 2 + mu_y ** 2 + c1)
            result *= max((luminance * cs_map).mean(), 0.0) ** weight
    return result


def test_ms_ssim_weights_are_the_papers():
    assert MS_SSIM_WEIGHTS == (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


@pytest.mark.parametrize("kind", DEGRADATIONS)
def test_ms_ssim_equals_paper_transcription(kind):
    image = _photo("coffee", crop=(200, 300))  # odd sizes appear at the coarser scales (25 x 37)
    bad = _degrade(image, kind)
    expected = np.mean([_paper_ms_ssim(image[:, :, c], bad[:, :, c], 255.0) for c in range(3)])
    got = ms_ssim(_nchw(bad), _nchw(image), data_range=255).item()
    assert abs(got - expected) < 1e-6, (got, expected)
    # The last scale alone is SSIM: with one weight MS-SSIM is SSIM to that power.
    single = ms_ssim(_nchw(bad), _nchw(image), data_range=255, weights=(1.0,)).item()
    assert abs(single - _skimage_ssim(image, bad, 255.0)) < 1e-4


# ----------------------------------------------------------------------------- edge cases
def test_identical_images():
    x = _nchw(_photo("camera", crop=(64, 64)))
    assert psnr(x, x, data_range=255).item() == math.inf
    assert ssim(x, x, data_range=255).item() == pytest.approx(1.0, abs=1e-12)


def test_empty_batch():
    empty = torch.zeros(0, 3, 32, 32)
    assert psnr(empty, empty, data_range=1.0, reduction="none").shape == (0,)
    assert ssim(empty, empty, data_range=1.0, reduction="none").shape == (0,)
    assert math.isnan(psnr(empty, empty, data_range=1.0).item())
    assert math.isnan(ssim(empty, empty, data_range=1.0).item())
    assert math.isnan(mse(empty, empty).item())


def test_ssim_is_differentiable():
    target = _nchw(_photo("camera", crop=(32, 32))) / 255
    preds = (target + 0.05 * torch.randn_like(target)).requires_grad_(True)
    ssim(preds, target, data_range=1.0).backward()
    assert preds.grad is not None and torch.isfinite(preds.grad).all()
    # gradients equal finite differences (float64, a 13 x 14 patch: a 3 x 4 valid SSIM map)
    small_target = target[:, :, :13, :14].double()
    small_preds = (small_target + 0.1 * torch.rand_like(small_target)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p: ssim(p, small_target, data_range=1.0), (small_preds,))


@pytest.mark.parametrize("call, match", [
    (lambda: ssim(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8), data_range=1.0), "win_size"),
    (lambda: ssim(torch.zeros(1, 1, 16, 16), torch.zeros(1, 1, 16, 15), data_range=1.0), "same shape"),
    (lambda: psnr(torch.zeros(3, 16, 16), torch.zeros(3, 16, 16), data_range=1.0), r"\(N, C, H, W\)"),
    (lambda: psnr(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4)), "constant"),
    (lambda: psnr(torch.zeros(1, 1, 4, 4), torch.ones(1, 1, 4, 4), data_range=-1), "positive"),
    (lambda: ms_ssim(torch.rand(1, 1, 100, 100), torch.rand(1, 1, 100, 100), data_range=1.0), "176"),
    (lambda: ssim(torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 16), data_range=1.0, reduction="sum"), "reduction"),
])
def test_bad_inputs_raise_clear_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()
