"""WGAN and WGAN-GP against Arjovsky et al.'s and Gulrajani et al.'s Algorithm 1: weight clipping
against torch.clamp, the critic's loss against the Wasserstein estimate, and the WGAN-GP critic
loss against a direct autograd computation of the penalty written out here."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

import canon
from canon.models.generative.wgan import clip_weights_


def test_clip_weights_equals_torch_clamp_on_parameters_only():
    torch.manual_seed(0)
    module = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.Linear(4, 2))
    with torch.no_grad():
        for p in module.parameters():
            p.uniform_(-0.05, 0.05)
    module[1].running_mean.fill_(0.3)                     # a buffer, not a weight
    before = copy.deepcopy(module.state_dict())
    clip_weights_(module, 0.01)
    for name, p in module.named_parameters():
        torch.testing.assert_close(p.detach(), before[name].clamp(-0.01, 0.01), rtol=0, atol=0)
        inside = before[name].abs() <= 0.01
        assert torch.equal(p.detach()[inside], before[name][inside])       # untouched inside the box
    assert torch.equal(module[1].running_mean, before["1.running_mean"])
    with pytest.raises(ValueError, match="clip_value"):
        clip_weights_(module, 0.0)


def test_wgan_clips_the_critic_after_each_critic_step_and_leaves_the_generator():
    torch.manual_seed(0)
    model = canon.create_model("wgan_32", base_channels=8)
    generator_before = {name: p.detach().clone() for name, p in model.generator.named_parameters()}
    real = torch.rand(4, 3, 32, 32) * 2 - 1
    loss = model.discriminator_loss(real, model.fake_batch(real))["loss"]
    loss.backward()
    torch.optim.RMSprop(model.discriminator.parameters(), lr=0.5).step()  # a big step: out of the box
    assert max(p.abs().max() for p in model.discriminator.parameters()) > 0.01
    model.after_discriminator_step()
    assert max(p.abs().max() for p in model.discriminator.parameters()) <= 0.01
    for name, p in model.generator.named_parameters():
        assert torch.equal(p.detach(), generator_before[name])


def test_wgan_recipe_and_critic():
    model = canon.create_model("wgan")
    assert model.optimizers["discriminator"] == {"modules": ("discriminator",), "name": "rmsprop", "lr": 5e-5}
    assert model.optimizers["generator"]["lr"] == 5e-5 and model.n_critic == 5 and model.weight_clip == 0.01
    assert not any(isinstance(m, nn.Sigmoid) for m in model.discriminator.modules())
    gp = canon.create_model("wgan_gp")
    assert gp.optimizers["discriminator"] == {"modules": ("discriminator",), "name": "adam", "lr": 1e-4,
                                              "betas": (0.0, 0.9)}
    assert gp.n_critic == 5 and gp.gradient_penalty_weight == 10.0
    # no batch norm in the WGAN-GP critic: the penalty is per example (Section 4), layer norm instead
    assert not any(isinstance(m, nn.BatchNorm2d) for m in gp.discriminator.modules())
    assert sum(isinstance(m, nn.GroupNorm) and m.num_groups == 1 for m in gp.discriminator.modules()) == 3


def test_critic_loss_is_minus_the_wasserstein_estimate():
    torch.manual_seed(0)
    model = canon.create_model("wgan_32", base_channels=8).eval()
    real = torch.rand(5, 3, 32, 32) * 2 - 1
    fake = model.fake_batch(real)
    f_real, f_fake = model.discriminator(real).flatten(), model.discriminator(fake).flatten()
    out = model.discriminator_loss(real, fake)
    torch.testing.assert_close(out["loss"], f_fake.mean() - f_real.mean())
    torch.testing.assert_close(out["wasserstein_estimate"], f_real.mean() - f_fake.mean())
    torch.testing.assert_close(model.generator_loss(real, fake)["loss"], -f_fake.mean())


def test_wgan_gp_loss_equals_a_direct_autograd_computation():
    torch.manual_seed(0)
    model = canon.create_model("wgan_gp_32", in_chans=1, base_channels=8).double()
    real = torch.rand(6, 1, 32, 32, dtype=torch.float64) * 2 - 1
    fake = model.fake_batch(real, generator=torch.Generator().manual_seed(1)).detach()
    # Algorithm 1 of Gulrajani et al., line by line
    eps = torch.rand(6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    penalties = []
    for i in range(6):
        x_hat = (eps[i] * real[i] + (1 - eps[i]) * fake[i])[None].requires_grad_(True)
        (grad,) = torch.autograd.grad(model.discriminator(x_hat).sum(), x_hat)
        penalties.append((grad.flatten().norm() - 1) ** 2)
    critic = model.discriminator(fake).mean() - model.discriminator(real).mean()
    expected = critic + 10 * torch.stack(penalties).mean()
    out = model.discriminator_loss(real, fake, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(out["loss"], expected)
    torch.testing.assert_close(out["gradient_penalty"], torch.stack(penalties).mean())
    # the loss trains the critic only: the fakes are detached inside
    fake_with_graph = model.fake_batch(real)
    model.discriminator_loss(real, fake_with_graph)["loss"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.discriminator.parameters())
    assert all(p.grad is None for p in model.generator.parameters())


def test_bad_input():
    with pytest.raises(ValueError, match="weight_clip"):
        canon.create_model("wgan", weight_clip=-1)
    with pytest.raises(ValueError, match="gradient_penalty_weight"):
        canon.create_model("wgan_gp", gradient_penalty_weight=-1.0)
    with pytest.raises(TypeError, match="weight_clip"):
        canon.create_model("wgan_gp", weight_clip=0.01)       # WGAN-GP does not clip: the valid names are listed
    model = canon.create_model("wgan_gp_32", base_channels=8)
    with pytest.raises(ValueError, match=r"\(N, 3, 32, 32\)"):
        model.discriminate(torch.zeros(2, 3, 64, 64))
