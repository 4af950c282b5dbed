"""DCGAN against Radford et al.: the parameter counts of the 64-base-channel networks, the layer
shapes of the paper's Figure 1, the Section 3 guidelines, the N(0, 0.02) initialisation, and a
torch.nn.functional transcription of the generator and discriminator."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import canon


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_parameter_counts_at_64x64x3():
    with torch.device("meta"):
        model = canon.create_model("dcgan")
    assert _count(model.generator) == 3_576_704
    assert _count(model.discriminator) == 2_765_568


def test_parameter_counts_of_the_32x32_form_by_hand():
    # G: 100->256 (4x4), 256->128, 128->64, 64->1, 4x4 kernels, no bias; BN scale+shift on 256, 128, 64
    g = 100 * 256 * 16 + 256 * 128 * 16 + 128 * 64 * 16 + 64 * 1 * 16 + 2 * (256 + 128 + 64)
    # D: 1->64, 64->128, 128->256, 256->1 (4x4), BN on 128 and 256
    d = 1 * 64 * 16 + 64 * 128 * 16 + 128 * 256 * 16 + 256 * 16 + 2 * (128 + 256)
    with torch.device("meta"):
        model = canon.create_model("dcgan_32", in_chans=1)
    assert (_count(model.generator), _count(model.discriminator)) == (g, d)


def _feature_shapes(modules, run):
    shapes = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: shapes.append(tuple(out.shape[1:]))) for m in modules]
    run()
    for h in hooks:
        h.remove()
    return shapes


def test_generator_layer_shapes_follow_figure_1_at_the_papers_width():
    with torch.device("meta"):
        model = canon.create_model("dcgan", base_channels=128)  # Figure 1: 4x4x1024 after the projection
        g = model.generator
        shapes = _feature_shapes([g.project, *g.stages, g.to_image], lambda: model.generate(torch.zeros(2, 100)))
    assert shapes == [(1024, 4, 4), (512, 8, 8), (256, 16, 16), (128, 32, 32), (3, 64, 64)]


def test_discriminator_mirrors_the_generator():
    with torch.device("meta"):
        model = canon.create_model("dcgan")
        d = model.discriminator
        shapes = _feature_shapes([d.from_image, *d.stages, d.to_logit],
                                 lambda: model.discriminate(torch.zeros(2, 3, 64, 64)))
        assert model(torch.zeros(2, 3, 64, 64)).shape == (2,)
    assert shapes == [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4), (1, 1, 1)]


def test_section_3_guidelines():
    model = canon.create_model("dcgan_32")
    g, d = model.generator, model.discriminator
    every = list(model.modules())
    assert not any(isinstance(m, (nn.MaxPool2d, nn.AvgPool2d, nn.Linear)) for m in every)  # all-convolutional
    convs_g = [m for m in g.modules() if isinstance(m, nn.ConvTranspose2d)]
    convs_d = [m for m in d.modules() if isinstance(m, nn.Conv2d)]
    assert all(m.kernel_size == (4, 4) for m in convs_g + convs_d)
    assert [m.stride for m in convs_g] == [(1, 1)] + [(2, 2)] * 3
    assert [m.stride for m in convs_d] == [(2, 2)] * 3 + [(1, 1)]
    # batch norm everywhere but the generator's output and the discriminator's input
    assert not any(isinstance(m, nn.BatchNorm2d) for m in g.to_image.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in d.from_image.modules())
    assert all(any(isinstance(m, nn.BatchNorm2d) for m in stage.modules())
               for stage in [g.project, *g.stages, *d.stages])
    assert isinstance(g.to_image[-1], nn.Tanh)
    assert any(isinstance(m, nn.ReLU) for m in g.modules())
    assert not any(isinstance(m, nn.LeakyReLU) for m in g.modules())
    slopes = {m.negative_slope for m in d.modules() if isinstance(m, nn.LeakyReLU)}
    assert slopes == {0.2} and not any(isinstance(m, nn.Sigmoid) for m in d.modules())  # sigmoid lives in the loss
    assert model.optimizers["generator"] == {"modules": ("generator",), "name": "adam", "lr": 2e-4,
                                             "betas": (0.5, 0.999)}
    assert model.batch_size == 128 and model.data_range == (-1.0, 1.0)


def test_weights_start_from_normal_0_002():
    torch.manual_seed(0)
    model = canon.create_model("dcgan")
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    weights = torch.cat([m.weight.detach().flatten() for m in convs])
    assert weights.numel() > 6_000_000
    assert abs(weights.mean()) < 1e-4 and weights.std() == pytest.approx(0.02, rel=0.005)
    scales = torch.cat([m.weight.detach() for m in model.modules() if isinstance(m, nn.BatchNorm2d)])
    assert scales.mean() == pytest.approx(1.0, abs=0.005) and scales.std() == pytest.approx(0.02, rel=0.15)


def _functional_generator(sd, z):
    """The generator written out: 4x4 transposed convs (stride 1 pad 0, then stride 2 pad 1), BN, ReLU, tanh."""
    def bn(x, p):
        return F.batch_norm(x, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"], sd[f"{p}.bias"])
    x = F.relu(bn(F.conv_transpose2d(z[:, :, None, None], sd["generator.project.0.weight"]), "generator.project.1"))
    for i in range(3):
        x = F.conv_transpose2d(x, sd[f"generator.stages.{i}.0.weight"], stride=2, padding=1)
        x = F.relu(bn(x, f"generator.stages.{i}.1"))
    return torch.tanh(F.conv_transpose2d(x, sd["generator.to_image.0.weight"], stride=2, padding=1))


def _functional_discriminator(sd, x):
    def bn(x, p):
        return F.batch_norm(x, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"], sd[f"{p}.bias"])
    x = F.leaky_relu(F.conv2d(x, sd["discriminator.from_image.0.weight"], stride=2, padding=1), 0.2)
    for i in range(3):
        x = F.conv2d(x, sd[f"discriminator.stages.{i}.0.weight"], stride=2, padding=1)
        x = F.leaky_relu(bn(x, f"discriminator.stages.{i}.1"), 0.2)
    return F.conv2d(x, sd["discriminator.to_logit.weight"]).flatten()


def test_outputs_equal_a_functional_transcription():
    torch.manual_seed(0)
    model = canon.create_model("dcgan", base_channels=8)
    for m in model.modules():  # non-trivial running statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    model.eval()
    sd = model.state_dict()
    z = model.noise(3, torch.Generator().manual_seed(1))
    assert -1 <= z.min() and z.max() <= 1                 # the paper's uniform z
    torch.testing.assert_close(model.generate(z), _functional_generator(sd, z), rtol=1e-4, atol=1e-5)
    x = torch.rand(3, 3, 64, 64) * 2 - 1
    torch.testing.assert_close(model.discriminate(x), _functional_discriminator(sd, x), rtol=1e-4, atol=1e-5)


def test_losses_are_binary_cross_entropy_on_the_discriminator():
    torch.manual_seed(0)
    model = canon.create_model("dcgan_32", base_channels=8).eval()
    real = torch.rand(4, 3, 32, 32) * 2 - 1
    fake = model.fake_batch(real)
    p_real, p_fake = torch.sigmoid(model.discriminate(real)), torch.sigmoid(model.discriminate(fake))
    expected = F.binary_cross_entropy(p_real, torch.ones(4)) + F.binary_cross_entropy(p_fake, torch.zeros(4))
    torch.testing.assert_close(model.discriminator_loss(real, fake)["loss"], expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.generator_loss(real, fake)["loss"],
                               F.binary_cross_entropy(p_fake, torch.ones(4)), rtol=1e-5, atol=1e-6)


def test_bad_input():
    model = canon.create_model("dcgan_32", in_chans=1, base_channels=8)
    with pytest.raises(ValueError, match=r"\(N, 1, 32, 32\)"):
        model.discriminate(torch.zeros(2, 1, 28, 28))       # MNIST must be padded or resized to 32
    with pytest.raises(ValueError, match="channel"):
        model.discriminate(torch.zeros(2, 3, 32, 32))
    with pytest.raises(ValueError, match=r"\(N, 100\)"):
        model.generate(torch.zeros(2, 100, 1, 1))
    with pytest.raises(ValueError, match="power of 2"):
        canon.create_model("dcgan", image_size=48)
    with pytest.raises(ValueError, match="base_channels"):
        canon.create_model("dcgan", base_channels=0)
