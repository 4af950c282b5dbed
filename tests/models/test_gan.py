"""The original GAN (gan_mlp) against Goodfellow et al.'s formulas and its layer sizes, and the
contract every registered generation model keeps (metadata, meta-device build, a forward at
its input size, an optimiser recipe that torch.optim accepts and that covers every parameter)."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import canon
from canon.models.generative.gan import Maxout

GENERATION_MODELS = canon.list_models(task="generation")
OPTIMIZERS = {"adam": torch.optim.Adam, "rmsprop": torch.optim.RMSprop, "sgd": torch.optim.SGD,
              "adagrad": torch.optim.Adagrad}


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# --------------------------------------------------------------------------- every generation model
def test_the_issue_names_are_registered():
    expected = {"gan_mlp", "dcgan", "dcgan_32", "wgan", "wgan_gp", "lapgan", "cyclegan", "cyclegan_32", "pixelcnn",
                "pixelrnn_row_lstm", "pixelrnn_diagonal_bilstm", "vae", "gated_pixelcnn"}
    assert expected <= set(GENERATION_MODELS)


@pytest.mark.parametrize("name", GENERATION_MODELS)
def test_generation_model_contract(name):
    info = canon.model_info(name)
    assert info.task == "generation" and info.num_classes is None and len(info.input_size) == 3
    assert "arXiv:" in info.paper
    # shapes only for the 256×256 CycleGAN; the others run for real (meta ops are slow for the RNNs' loops)
    with torch.device("meta" if name == "cyclegan" else "cpu"), torch.no_grad():
        model = canon.create_model(name)
        out = model(torch.zeros(2, *info.input_size))       # the registered input size is accepted
    assert not isinstance(out, torch.Tensor) or out.shape[0] == 2
    # the recipe: every optimiser builds with torch.optim, and together they update every parameter once
    covered = []
    for recipe in model.optimizers.values():
        options = {k: v for k, v in recipe.items() if k not in ("modules", "name")}
        modules = [getattr(model, m) for m in recipe["modules"]] if "modules" in recipe else [model]
        params = [p for m in modules for p in m.parameters()]
        OPTIMIZERS[recipe["name"]](params, **options)
        covered += [id(p) for p in params]
    assert sorted(covered) == sorted(id(p) for p in model.parameters())
    assert callable(getattr(model, "sample", None) or model.translate_ab)  # CycleGAN translates instead


@pytest.mark.parametrize("name", [n for n in GENERATION_MODELS if n not in ("cyclegan", "cyclegan_32")])
def test_generation_models_reject_a_wrong_image_size(name):
    info = canon.model_info(name)
    c, h, w = info.input_size
    with torch.device("meta"):
        model = canon.create_model(name)
        with pytest.raises(ValueError, match=f"{h}"):
            model(torch.zeros(1, c, h + 4, w + 4))
        with pytest.raises(ValueError, match="channel"):
            model(torch.zeros(1, c + 1, h, w))


# --------------------------------------------------------------------------- gan_mlp
def test_gan_mlp_layer_sizes_and_parameter_counts():
    model = canon.create_model("gan_mlp")
    # G: 100 -> 1200 -> 1200 -> 784; D: 784 -> maxout 240x5 -> maxout 240x5 -> 1
    assert _count(model.generator) == (100 + 1) * 1200 + (1200 + 1) * 1200 + (1200 + 1) * 784 == 2_503_984
    assert _count(model.discriminator) == (784 + 1) * 240 * 5 + (240 + 1) * 240 * 5 + (240 + 1) == 1_231_441
    linears = [m for m in model.generator.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(100, 1200), (1200, 1200), (1200, 784)]
    assert isinstance(list(model.generator.modules())[-1], nn.Sigmoid)
    dropouts = [m.p for m in model.discriminator.modules() if isinstance(m, nn.Dropout)]
    assert dropouts == [0.2, 0.5, 0.5]
    assert model.n_critic == 1 and model.data_range == (0.0, 1.0)


def test_maxout_is_the_max_over_its_linear_pieces():
    torch.manual_seed(0)
    layer = Maxout(6, units=3, pieces=4)
    x = torch.randn(5, 6)
    w, b = layer.linear.weight.view(3, 4, 6), layer.linear.bias.view(3, 4)
    expected = torch.stack([torch.stack([x @ w[u, k] + b[u, k] for k in range(4)]).max(0).values
                            for u in range(3)], dim=1)
    torch.testing.assert_close(layer(x), expected)


def test_gan_mlp_losses_are_the_papers_value_function():
    torch.manual_seed(0)
    model = canon.create_model("gan_mlp").eval()  # eval: no dropout, so D is deterministic
    real = torch.rand(8, 1, 28, 28)
    fake = model.fake_batch(real, generator=torch.Generator().manual_seed(1))
    assert fake.shape == real.shape and 0 < fake.min() and fake.max() < 1
    d_real = torch.sigmoid(model.discriminator(real)).squeeze(1)
    d_fake = torch.sigmoid(model.discriminator(fake)).squeeze(1)
    expected_d = -(torch.log(d_real).mean() + torch.log(1 - d_fake).mean())
    torch.testing.assert_close(model.discriminator_loss(real, fake)["loss"], expected_d, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.generator_loss(real, fake)["loss"], -torch.log(d_fake).mean(),
                               rtol=1e-5, atol=1e-6)
    minimax = canon.create_model("gan_mlp", generator_loss="minimax").eval()
    minimax.load_state_dict(model.state_dict())
    torch.testing.assert_close(minimax.generator_loss(real, fake)["loss"], torch.log(1 - d_fake).mean(),
                               rtol=1e-5, atol=1e-6)


def test_discriminator_loss_does_not_train_the_generator():
    model = canon.create_model("gan_mlp")
    real = torch.rand(4, 1, 28, 28)
    fake = model.fake_batch(real)
    model.discriminator_loss(real, fake)["loss"].backward()
    assert all(p.grad is None for p in model.generator.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.discriminator.parameters())


def test_gan_mlp_noise_is_uniform_and_seeded():
    model = canon.create_model("gan_mlp")
    z = model.noise(20_000, torch.Generator().manual_seed(0))
    assert z.shape == (20_000, 100) and -1 <= z.min() and z.max() <= 1
    assert abs(z.mean()) < 0.01 and abs(z.var() - 1 / 3) < 0.01   # U(-1, 1): mean 0, variance 1/3
    a = model.sample(3, torch.Generator().manual_seed(5))
    b = model.sample(3, torch.Generator().manual_seed(5))
    torch.testing.assert_close(a, b)


def test_gan_mlp_bad_input():
    model = canon.create_model("gan_mlp")
    with pytest.raises(ValueError, match=r"\(N, 100\)"):
        model.generate(torch.zeros(2, 64))
    with pytest.raises(ValueError, match=r"\(N, 1, 28, 28\)"):
        model.discriminate(torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match="generator_loss must be one of"):
        canon.create_model("gan_mlp", generator_loss="minmax")
    with pytest.raises(TypeError, match="latent_dim"):
        canon.create_model("gan_mlp", nz=100)
    with pytest.raises(ValueError, match="num must be"):
        model.sample(0)
