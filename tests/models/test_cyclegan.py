"""CycleGAN against Zhu et al.: the generator's and PatchGAN's parameter counts, the PatchGAN's
70×70 receptive field measured from input gradients, the losses written out from Section 7.1,
the image pool's 50 % rule, and the linear learning-rate decay."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

import canon
from canon.models.generative.cyclegan import ImagePool, PatchDiscriminator, linear_decay_factor


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_parameter_counts_at_256():
    with torch.device("meta"):
        model = canon.create_model("cyclegan")
        assert model.translate_ab(torch.zeros(1, 3, 256, 256)).shape == (1, 3, 256, 256)
        assert model.discriminator_a(torch.zeros(1, 3, 256, 256)).shape == (1, 1, 30, 30)
    assert _count(model.generator_ab) == _count(model.generator_ba) == 11_378_179
    assert _count(model.discriminator_a) == _count(model.discriminator_b) == 2_764_737


def test_generator_layout():
    with torch.device("meta"):
        g = canon.create_model("cyclegan").generator_ab
    assert len(g.blocks) == 9
    convs = [m for m in g.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    # c7s1-64, d128, d256, 9 x (R256: two 3×3), u128, u64, c7s1-3
    assert [(m.kernel_size, m.out_channels) for m in convs] == (
        [((7, 7), 64), ((3, 3), 128), ((3, 3), 256)] + [((3, 3), 256)] * 18
        + [((3, 3), 128), ((3, 3), 64), ((7, 7), 3)])
    assert sum(isinstance(m, nn.ReflectionPad2d) for m in g.modules()) == 2 + 18
    norms = [m for m in g.modules() if isinstance(m, nn.InstanceNorm2d)]
    assert len(norms) == 5 + 18 and not any(m.affine for m in norms)  # c7s1, d, d, u, u + the blocks
    assert not any(isinstance(m, nn.BatchNorm2d) for m in g.modules()) and isinstance(g.head[-1], nn.Tanh)


def _receptive_field(discriminator: nn.Module, size: int) -> tuple[int, int]:
    """The input region one interior output cell depends on, from the gradient of that cell."""
    d = copy.deepcopy(discriminator)
    for name, module in list(d.net.named_children()):
        if isinstance(module, nn.InstanceNorm2d):   # instance norm couples all positions; drop it here
            d.net._modules[name] = nn.Identity()
    x = torch.randn(1, 3, size, size, requires_grad=True)
    out = d(x)
    out[0, 0, out.shape[2] // 2, out.shape[3] // 2].backward()
    rows = torch.nonzero(x.grad.abs().sum((0, 1, 3))).flatten()
    cols = torch.nonzero(x.grad.abs().sum((0, 1, 2))).flatten()
    return int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)


def test_patchgan_sees_70x70_patches():
    torch.manual_seed(0)
    assert _receptive_field(PatchDiscriminator(3, 8, num_layers=3), 160) == (70, 70)
    assert _receptive_field(PatchDiscriminator(3, 8, num_layers=2), 96) == (34, 34)   # cyclegan_32's


def test_small_form_for_32x32():
    model = canon.create_model("cyclegan_32")
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert model(x).shape == (2, 3, 32, 32) and model.discriminator_b(x).shape == (2, 1, 6, 6)
    assert len(model.generator_ab.blocks) == 6


def test_losses_are_section_7_written_out():
    torch.manual_seed(0)
    model = canon.create_model("cyclegan_32", base_channels=8, num_blocks=1, discriminator_channels=8, pool_size=0)
    a, b = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    fake_a, fake_b = model.fake_batch((a, b))
    g_ab, g_ba, d_a, d_b = model.generator_ab, model.generator_ba, model.discriminator_a, model.discriminator_b
    torch.testing.assert_close(fake_b, g_ab(a))
    adversarial = ((d_b(g_ab(a)) - 1) ** 2).mean() + ((d_a(g_ba(b)) - 1) ** 2).mean()
    cycle = (g_ba(g_ab(a)) - a).abs().mean() + (g_ab(g_ba(b)) - b).abs().mean()
    identity = (g_ab(b) - b).abs().mean() + (g_ba(a) - a).abs().mean()
    g = model.generator_loss((a, b), (fake_a, fake_b))
    torch.testing.assert_close(g["loss"], adversarial + 10 * cycle + 0.5 * 10 * identity)
    d = model.discriminator_loss((a, b), (fake_a, fake_b))
    expected_d = 0.5 * (((d_a(a) - 1) ** 2).mean() + (d_a(fake_a) ** 2).mean()) \
        + 0.5 * (((d_b(b) - 1) ** 2).mean() + (d_b(fake_b) ** 2).mean())
    torch.testing.assert_close(d["loss"], expected_d)
    no_identity = canon.create_model("cyclegan_32", base_channels=8, num_blocks=1, discriminator_channels=8,
                                     identity_weight=0.0)
    no_identity.load_state_dict(model.state_dict())
    torch.testing.assert_close(no_identity.generator_loss((a, b), (fake_a, fake_b))["loss"], adversarial + 10 * cycle)


def test_recipe():
    model = canon.create_model("cyclegan_32")
    assert model.optimizers["generator"]["modules"] == ("generator_ab", "generator_ba")
    assert model.optimizers["discriminator"]["modules"] == ("discriminator_a", "discriminator_b")
    assert model.optimizers["generator"]["lr"] == 2e-4 and model.optimizers["generator"]["betas"] == (0.5, 0.999)
    assert model.lr_schedule == {"name": "linear_decay", "constant_epochs": 100, "decay_epochs": 100}
    assert model.batch_size == 1 and model.cycle_weight == 10 and model.identity_weight == 0.5
    assert model.pool_a.size == model.pool_b.size == 50


def test_image_pool_follows_the_50_percent_rule():
    pool = ImagePool(50, seed=0)
    first = torch.arange(50, dtype=torch.float32).view(50, 1, 1, 1)
    torch.testing.assert_close(pool.query(first), first)          # while filling: stored and returned
    assert len(pool) == 50
    from_history, queries = 0, 4000
    for step in range(queries):
        new = torch.full((1, 1, 1, 1), 1000.0 + step)
        stored_before = torch.stack(pool.images).flatten().tolist()
        out = float(pool.query(new))
        stored_after = torch.stack(pool.images).flatten().tolist()
        if out == 1000.0 + step:                                   # the new image itself; pool unchanged
            assert stored_after == stored_before
        else:                                                      # an old image, replaced by the new one
            from_history += 1
            assert out in stored_before
            changed = [i for i, (u, v) in enumerate(zip(stored_before, stored_after)) if u != v]
            assert len(changed) == 1 and stored_before[changed[0]] == out and stored_after[changed[0]] == 1000.0 + step
        assert len(pool) == 50
    assert abs(from_history / queries - 0.5) < 0.04               # binomial: sd ~ 0.008
    off = ImagePool(0)
    x = torch.randn(3, 1, 2, 2)
    assert off.query(x) is x and len(off) == 0


def test_linear_decay_schedule():
    factors = [linear_decay_factor(e) for e in range(200)]
    assert factors[:100] == [1.0] * 100
    steps = [factors[e] - factors[e + 1] for e in range(99, 199)]
    assert all(s == pytest.approx(1 / 101) for s in steps)            # linear decay over the next 100
    assert factors[199] == pytest.approx(1 / 101) and linear_decay_factor(250) == 0.0
    optimizer = torch.optim.Adam([nn.Parameter(torch.zeros(1))], lr=2e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_decay_factor)
    lrs = []
    for _ in range(200):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[99] == pytest.approx(2e-4) and lrs[150] == pytest.approx(2e-4 * (1 - 51 / 101))


def test_bad_input():
    model = canon.create_model("cyclegan_32", base_channels=8, num_blocks=1)
    with pytest.raises(ValueError, match="divisible by 4"):
        model.translate_ab(torch.zeros(1, 3, 30, 30))
    with pytest.raises(ValueError, match="too small"):
        model.translate_ba(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="channel"):
        model.translate_ab(torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match="pair"):
        model.fake_batch(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="ImagePool size"):
        ImagePool(-1)
    with pytest.raises(ValueError, match="decay_epochs"):
        linear_decay_factor(3, decay_epochs=0)
