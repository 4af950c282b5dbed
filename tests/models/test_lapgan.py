"""LAPGAN against Denton et al.: the Laplacian pyramid's exact round trip and its levels computed
independently (4×4 block means, bilinear upsampling from torch), coarse-to-fine sampling written
out, each level's conditioning on the real coarser image, and the per-level GAN losses."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import canon
from canon.losses.generative import gan_generator_loss
from canon.models.generative.lapgan import build_laplacian_pyramid, reconstruct_from_laplacian_pyramid


def _up(x):
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


@pytest.mark.parametrize("num_levels", [1, 2, 3, 4])
def test_reconstruct_of_build_is_the_image(num_levels):
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(num_levels), dtype=torch.float64)
    pyramid = build_laplacian_pyramid(x, num_levels)
    assert [tuple(p.shape[-2:]) for p in pyramid] == [(32 >> (num_levels - 1 - k),) * 2 for k in range(num_levels)]
    torch.testing.assert_close(reconstruct_from_laplacian_pyramid(pyramid), x, rtol=0, atol=1e-12)


def test_pyramid_levels_computed_independently():
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    low, band_16, band_32 = build_laplacian_pyramid(x, 3)
    # the 8×8 low-pass image: the mean of each 4×4 block, written as a reshape
    block_means = x.view(1, 3, 8, 4, 8, 4).mean(dim=(3, 5))
    torch.testing.assert_close(low, block_means)
    half = x.view(1, 3, 16, 2, 16, 2).mean(dim=(3, 5))
    torch.testing.assert_close(band_32, x - _up(half))                 # h_0 = I_0 - u(I_1)
    torch.testing.assert_close(band_16, half - _up(block_means))       # h_1 = I_1 - u(I_2)


def test_lapgan_levels_and_players():
    model = canon.create_model("lapgan")
    assert model.level_sizes == (8, 16, 32) and len(model.generators) == len(model.discriminators) == 3
    coarse_g = [m for m in model.generators[0].modules() if isinstance(m, nn.Linear)]
    coarse_d = [m for m in model.discriminators[0].modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in coarse_g] == [(100, 1200), (1200, 1200), (1200, 3 * 8 * 8)]
    assert [(m.in_features, m.out_features) for m in coarse_d] == [(3 * 8 * 8, 600), (600, 600), (600, 1)]
    assert any(isinstance(m, nn.Dropout) for m in model.discriminators[0].modules())
    for g in model.generators[1:]:  # three conv layers with batch norm, the noise as a fourth colour plane
        convs = [m for m in g.modules() if isinstance(m, nn.Conv2d)]
        assert len(convs) == 3 and convs[0].in_channels == 3 + 1 and convs[-1].out_channels == 3
        assert sum(isinstance(m, nn.BatchNorm2d) for m in g.modules()) == 2
    noises = model.noise(4, torch.Generator().manual_seed(0))
    assert [tuple(z.shape) for z in noises] == [(4, 100), (4, 1, 16, 16), (4, 1, 32, 32)]
    assert all(-1 <= z.min() and z.max() <= 1 for z in noises)
    assert model.optimizers["generator"]["modules"] == ("generators",)
    assert model.optimizers["generator"]["name"] == "sgd"


def _small():
    torch.manual_seed(0)
    return canon.create_model("lapgan", coarse_generator_hidden=32, coarse_discriminator_hidden=16,
                              hidden_channels=8).eval()


def test_sampling_runs_coarse_to_fine():
    model = _small()
    z0, z1, z2 = model.noise(3, torch.Generator().manual_seed(1))
    g0, g1, g2 = model.generators
    i0 = g0.net(z0).view(3, 3, 8, 8)
    i1 = _up(i0) + g1.net(torch.cat([_up(i0), z1], 1))
    i2 = _up(i1) + g2.net(torch.cat([_up(i1), z2], 1))
    torch.testing.assert_close(model.generate([z0, z1, z2]), i2)
    assert model.sample(2).shape == (2, 3, 32, 32)


def test_levels_train_on_the_real_coarser_image_and_their_losses():
    model = _small()
    real = torch.rand(4, 3, 32, 32) * 2 - 1
    fake = model.fake_batch(real, generator=torch.Generator().manual_seed(2))
    half, quarter = F.avg_pool2d(real, 2), F.avg_pool2d(real, 4)
    assert fake[0][1] is None and fake[0][0].shape == (4, 3, 8, 8)
    torch.testing.assert_close(fake[1][1], _up(quarter))       # l for the 16×16 level: u(real 8×8)
    torch.testing.assert_close(fake[2][1], _up(half))          # l for the 32×32 level: u(real 16×16)
    d = model.discriminators
    real_logits = [d[0].net(quarter), d[1].net(half), d[2].net(real)]          # D_k(h_k + l_k) = D_k(I_k)
    fake_logits = [d[0].net(fake[0][0]), d[1].net(fake[1][0] + fake[1][1]), d[2].net(fake[2][0] + fake[2][1])]
    out = model.discriminator_loss(real, fake)
    g_out = model.generator_loss(real, fake)
    for k in range(3):
        pr, pf = torch.sigmoid(real_logits[k]), torch.sigmoid(fake_logits[k])
        torch.testing.assert_close(out[f"level_{k}"], -(torch.log(pr).mean() + torch.log(1 - pf).mean()),
                                   rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(g_out[f"level_{k}"], -torch.log(pf).mean(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["loss"], sum(out[f"level_{k}"] for k in range(3)))
    torch.testing.assert_close(model.discriminate(real), torch.cat(real_logits, 1), rtol=1e-5, atol=1e-6)


def test_levels_are_independent():
    """Section 3.3: each level is trained on its own — the summed loss gives level k's generator
    exactly the gradient of level k's own loss, since its fakes are conditioned on real images."""
    model = _small()
    real = torch.rand(4, 3, 32, 32) * 2 - 1
    fake = model.fake_batch(real, generator=torch.Generator().manual_seed(3))
    model.generator_loss(real, fake)["loss"].backward(retain_graph=True)
    from_total = [p.grad.clone() for p in model.generators[1].parameters()]
    model.zero_grad()
    gan_generator_loss(model.discriminators[1](*fake[1]).flatten()).backward()
    for total, own in zip(from_total, (p.grad for p in model.generators[1].parameters())):
        torch.testing.assert_close(total, own)
    assert any(g.abs().sum() > 0 for g in from_total)


def test_bad_input():
    model = _small()
    with pytest.raises(ValueError, match=r"\(N, 3, 32, 32\)"):
        model.discriminate(torch.zeros(1, 3, 28, 28))
    with pytest.raises(ValueError, match="one noise tensor per level"):
        model.generate([torch.zeros(1, 100)])
    with pytest.raises(ValueError, match="level 2"):
        model.generate([torch.zeros(1, 100), torch.zeros(1, 1, 16, 16), torch.zeros(1, 1, 16, 16)])
    with pytest.raises(ValueError, match="divisible"):
        canon.create_model("lapgan", image_size=36, num_levels=4)
    with pytest.raises(ValueError, match="divisible by 4"):
        build_laplacian_pyramid(torch.zeros(1, 3, 30, 30), 3)
    with pytest.raises(ValueError, match="twice the size"):
        reconstruct_from_laplacian_pyramid([torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 32, 32)])
    with pytest.raises(ValueError, match="per-level list"):
        model.generator_loss(torch.zeros(1, 3, 32, 32), torch.zeros(1, 3, 32, 32))
