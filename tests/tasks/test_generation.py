"""The generation task: a GAN step against a hand computation (which parameters move on which
step, n_critic), the recipes and schedules, the EMA against its formula, resume bit-exact for a
two-player model, sample grids that are the same fixed noise, the Fréchet distance wired to
scipy's sqrtm on known features, the data pipeline, the CLI round trip, and the errors."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

import canon
from canon.cli import main as canon_main
from canon.data import build_dataset
from canon.data import transforms as T
from canon.engine.checkpoint import load_weights
from canon.engine.config import TrainConfig
from canon.engine.step import StepContext
from canon.engine.trainer import RunInfo
from canon.models.generative.gan import AdversarialModel
from canon.tasks import train
from canon.tasks.generation import (ClassifierFeatures, DomainImages, GenerationImages, GenerationOptions,
                                    GenerationTask, UnpairedDomains, WeightAverage, binarize, image_grid,
                                    to_unit_range)

CPU = torch.device("cpu")


# ----------------------------------------------------------------------------- helpers
class LinearPlayers(AdversarialModel):
    """One-pixel images: G(z) = w_g z + b_g, D(x) = w_d x + b_d (a logit); z fixed per call."""

    optimizers = {"generator": {"modules": ("generator",), "name": "sgd", "lr": 0.1},
                  "discriminator": {"modules": ("discriminator",), "name": "sgd", "lr": 0.2}}
    n_critic = 2

    def __init__(self, generator_loss: str = "non_saturating"):
        super().__init__()
        self.image_size, self.in_chans, self.latent_dim = 1, 1, 1
        self.generator_loss_mode = generator_loss
        self.generator = nn.Sequential(nn.Linear(1, 1), nn.Unflatten(1, (1, 1, 1)))
        self.discriminator = nn.Sequential(nn.Flatten(), nn.Linear(1, 1))
        with torch.no_grad():
            self.generator[0].weight.fill_(0.5)
            self.generator[0].bias.fill_(0.1)
            self.discriminator[1].weight.fill_(0.3)
            self.discriminator[1].bias.fill_(-0.2)

    def noise(self, num, generator=None):
        return torch.linspace(-1.0, 1.0, num).view(num, 1)


def _drive(task, model, batches, epoch: int = 0):
    """Run ``task.train_step`` on each batch the way the engine does; the parameters after each step."""
    config = TrainConfig(model="test")
    optimizers = task.configure_optimizers(model, config)
    schedulers = task.configure_schedulers(optimizers, config, len(batches), model)
    step = StepContext(optimizers=optimizers, schedulers=schedulers, module=model, device=CPU)
    after = []
    for batch in batches:
        for optimizer in optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        step.begin_micro_batch(epoch=epoch, micro_batch=0, loss_weight=1.0, batch_size=len(batch[0]))
        task.train_step(model, batch, step)
        step.end_batch()
        after.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    return after, optimizers, schedulers


def _sigmoid(t):
    return 1.0 / (1.0 + math.exp(-t))


def _digits_run(model, **kwargs):
    """A task with the digits data built for ``model`` (no training)."""
    task = GenerationTask(**{k: v for k, v in kwargs.items() if k != "model_kwargs"})
    config = TrainConfig(model=model, data="digits", model_kwargs=kwargs.get("model_kwargs", {}))
    data = task.build_data(RunInfo(config=config, device=CPU))
    return task, data


# ----------------------------------------------------------------------------- the step
@pytest.mark.parametrize("mode", ["non_saturating", "minimax"])
def test_gan_step_matches_the_hand_computation(mode):
    model = LinearPlayers(generator_loss=mode)
    reals = [torch.tensor([0.8, -0.4, 1.2]), torch.tensor([0.1, 0.9, -1.0]), torch.tensor([1.5, 0.3, 0.0]),
             torch.tensor([-0.6, 0.7, 0.2])]
    batches = [(x.view(3, 1, 1, 1), torch.zeros(3, dtype=torch.long)) for x in reals]
    after, optimizers, _ = _drive(GenerationTask(), model, batches)
    assert isinstance(optimizers["generator"], torch.optim.SGD) and optimizers["discriminator"].defaults["lr"] == 0.2

    wg, bg, wd, bd = 0.5, 0.1, 0.3, -0.2
    z = [-1.0, 0.0, 1.0]
    for k, x in enumerate(reals):
        x = x.tolist()
        fake = [wg * zi + bg for zi in z]
        # D: mean softplus(-(wd x + bd)) + mean softplus(wd f + bd)
        grad_wd = (sum(-_sigmoid(-(wd * xi + bd)) * xi for xi in x) + sum(_sigmoid(wd * f + bd) * f for f in fake)) / 3
        grad_bd = (sum(-_sigmoid(-(wd * xi + bd)) for xi in x) + sum(_sigmoid(wd * f + bd) for f in fake)) / 3
        wd, bd = wd - 0.2 * grad_wd, bd - 0.2 * grad_bd
        state = after[k]
        assert state["discriminator.1.weight"].item() == pytest.approx(wd, abs=1e-6)
        assert state["discriminator.1.bias"].item() == pytest.approx(bd, abs=1e-6)
        if k % 2 == 1:  # n_critic = 2: the generator steps after batches 1 and 3, against the updated D
            logits = [wd * (wg * zi + bg) + bd for zi in z]
            if mode == "non_saturating":  # d/dl softplus(-l) = -sigmoid(-l)
                dl = [-_sigmoid(-l) for l in logits]
            else:  # minimax: d/dl (-softplus(l)) = -sigmoid(l), small when D rejects the fakes
                dl = [-_sigmoid(l) for l in logits]
            grad_wg = sum(d * wd * zi for d, zi in zip(dl, z)) / 3
            grad_bg = sum(d * wd for d in dl) / 3
            wg, bg = wg - 0.1 * grad_wg, bg - 0.1 * grad_bg
        assert state["generator.0.weight"].item() == pytest.approx(wg, abs=1e-6)
        assert state["generator.0.bias"].item() == pytest.approx(bg, abs=1e-6)
    # which parameters moved on which step
    assert torch.equal(after[0]["generator.0.weight"], torch.tensor([[0.5]]))
    assert not torch.equal(after[1]["generator.0.weight"], after[0]["generator.0.weight"])
    assert torch.equal(after[2]["generator.0.weight"], after[1]["generator.0.weight"])
    assert all(not torch.equal(after[k]["discriminator.1.weight"], after[k - 1]["discriminator.1.weight"])
               for k in range(1, 4))


def test_cyclegan_step_updates_each_player_with_its_own_loss_only():
    """Generators first, then the discriminators on the same (pre-update) fakes through the pools;
    the generators' loss must leave no gradient on the discriminators, which step after them."""
    import copy

    torch.manual_seed(0)
    model = canon.create_model("cyclegan_32", base_channels=2, num_blocks=1, discriminator_channels=2)
    reference = copy.deepcopy(model)
    a, b = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    after, _, _ = _drive(GenerationTask(), model, [(a, b)])

    fake = reference.fake_batch((a, b))
    g_params = list(reference.generator_ab.parameters()) + list(reference.generator_ba.parameters())
    d_params = list(reference.discriminator_a.parameters()) + list(reference.discriminator_b.parameters())
    g_grads = torch.autograd.grad(reference.generator_loss((a, b), fake)["loss"], g_params)
    d_loss = reference.discriminator_loss((a, b), (fake[0].detach(), fake[1].detach()))["loss"]
    d_grads = torch.autograd.grad(d_loss, d_params)
    for params, grads in ((g_params, g_grads), (d_params, d_grads)):
        for p, grad in zip(params, grads):
            p.grad = grad
        torch.optim.Adam(params, lr=2e-4, betas=(0.5, 0.999)).step()
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(after[0][key], value, rtol=1e-5, atol=1e-7, msg=key)


def test_wgan_critic_is_clipped_after_every_critic_step_and_the_generator_waits_five():
    torch.manual_seed(0)
    model = canon.create_model("wgan_32", image_size=8, in_chans=1, base_channels=2, latent_dim=4)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    batches = [(torch.rand(4, 1, 8, 8) * 2 - 1, torch.zeros(4)) for _ in range(6)]
    after, optimizers, _ = _drive(GenerationTask(), model, batches)
    assert isinstance(optimizers["discriminator"], torch.optim.RMSprop)
    assert optimizers["discriminator"].defaults["lr"] == 5e-5
    generator_keys = [k for k in initial if k.startswith("generator.") and "running" not in k and "num_batches" not in k]
    for k, state in enumerate(after):
        critic = [v for name, v in state.items() if name.startswith("discriminator.") and v.is_floating_point()
                  and "running" not in name]
        assert max(float(v.abs().max()) for v in critic) <= 0.01 + 1e-9  # c = 0.01, after every critic step
        moved = any(not torch.equal(state[key], initial[key]) for key in generator_keys)
        assert moved == (k >= 4), k  # first generator step after the fifth critic step (step_count 4)


def test_paper_recipes_build_the_papers_optimizers():
    def built(name, **kwargs):
        return GenerationTask().configure_optimizers(canon.create_model(name, **kwargs), TrainConfig(model=name))

    gp = built("wgan_gp_32", image_size=8, base_channels=2, latent_dim=4)
    assert isinstance(gp["generator"], torch.optim.Adam)
    assert gp["generator"].defaults["lr"] == 1e-4 and gp["discriminator"].defaults["betas"] == (0.0, 0.9)
    dc = built("dcgan_32", base_channels=2)
    assert dc["discriminator"].defaults["lr"] == 2e-4 and dc["generator"].defaults["betas"] == (0.5, 0.999)
    assert dc["generator"].defaults["weight_decay"] == 0  # the engine's --weight-decay 5e-4 is not applied
    vae = built("vae")
    assert list(vae) == ["model"] and isinstance(vae["model"], torch.optim.Adagrad)
    flags = GenerationTask(recipe="flags").configure_optimizers(
        canon.create_model("dcgan_32", base_channels=2), TrainConfig(model="dcgan_32", optimizer="adam", lr=3e-3))
    assert flags["generator"].defaults["lr"] == 3e-3 and flags["discriminator"].defaults["lr"] == 3e-3


def test_lapgan_lr_and_momentum_schedules_and_cyclegan_linear_decay():
    torch.manual_seed(0)
    model = canon.create_model("lapgan", image_size=8, num_levels=2, latent_dim=4, coarse_generator_hidden=8,
                               coarse_discriminator_hidden=8, hidden_channels=4)
    batches = [(torch.rand(4, 3, 8, 8) * 2 - 1, torch.zeros(4)) for _ in range(3)]
    _, optimizers, _ = _drive(GenerationTask(), model, batches, epoch=100)
    gamma = 1 / (1 + 4e-5)
    for name in ("generator", "discriminator"):
        group = optimizers[name].param_groups[0]
        assert group["lr"] == pytest.approx(0.02 * gamma ** 3, rel=1e-9)  # divided by 1 + 4e-5 each step
        assert group["momentum"] == pytest.approx(min(0.5 + 8e-4 * 100, 0.8))  # 0.5 + 8e-4 an epoch

    cycle = canon.create_model("cyclegan_32", base_channels=2, num_blocks=1, discriminator_channels=2)
    task = GenerationTask()
    config = TrainConfig(model="cyclegan_32", epochs=4)
    optimizers = task.configure_optimizers(cycle, config)
    schedulers = task.configure_schedulers(optimizers, config, 2, cycle)
    factors = []
    for _ in range(8):  # 4 epochs of 2 steps: constant for half the run, then linear towards 0
        factors.append(schedulers["generator"].get_last_lr()[0] / 2e-4)
        optimizers["generator"].step()
        schedulers["generator"].step()
    assert factors == pytest.approx([1, 1, 1, 1, 2 / 3, 2 / 3, 1 / 3, 1 / 3])


def test_weight_average_follows_its_formula_and_samples_use_it():
    torch.manual_seed(0)
    model = canon.create_model("dcgan_32", image_size=8, in_chans=1, base_channels=2, latent_dim=4)
    names = [n for n, _ in model.generator.named_parameters()]
    average = {n: p.detach().clone() for n, p in model.generator.named_parameters()}  # starts at the initial weights
    task = GenerationTask(ema=0.75, n_critic=1)
    batches = [(torch.rand(4, 1, 8, 8) * 2 - 1, torch.zeros(4)) for _ in range(3)]
    after, optimizers, _ = _drive(task, model, batches)
    for state in after:  # ema <- 0.75 ema + 0.25 w, after each generator step
        for n in names:
            average[n] = 0.75 * average[n] + 0.25 * state[f"generator.{n}"]
    kept = dict(zip(names, [a for _, a in optimizers["generator_ema"].parameters_and_averages()]))
    for n in names:
        torch.testing.assert_close(kept[n], average[n], rtol=1e-6, atol=1e-7)
    # the samples of the task are the averaged generator's; the weights come back afterwards
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with task._sampling(model):
        drawn = model.sample(5, generator=torch.Generator().manual_seed(1))
    reference = canon.create_model("dcgan_32", image_size=8, in_chans=1, base_channels=2, latent_dim=4)
    reference.load_state_dict(before)
    with torch.no_grad():
        for n, p in reference.generator.named_parameters():
            p.copy_(average[n])
    reference.eval()
    with torch.no_grad():
        torch.testing.assert_close(drawn, reference.sample(5, generator=torch.Generator().manual_seed(1)))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    with pytest.raises(ValueError, match="decay"):
        WeightAverage([torch.zeros(1, requires_grad=True)], 1.0)


# ----------------------------------------------------------------------------- resume and samples
@pytest.fixture(scope="module")
def wgan_runs(tmp_path_factory):
    """wgan_gp_32 (8×8, tiny) with --ema on digits: two epochs straight, and one epoch then --resume."""
    root = tmp_path_factory.mktemp("generation-resume")
    common = dict(data="digits", batch_size=8, max_steps_per_epoch=3, seed=0, progress=False, device="cpu",
                  ema=0.9, model_kwargs={"image_size": 8, "base_channels": 2, "latent_dim": 4})
    train("wgan_gp_32", epochs=2, out=str(root / "full"), **common)
    train("wgan_gp_32", epochs=1, out=str(root / "cut"), **common)
    train("wgan_gp_32", epochs=2, out=str(root / "cut"), resume=True, **common)
    return root


def test_resume_of_a_two_player_run_is_bit_exact(wgan_runs):
    full, cut = wgan_runs / "full", wgan_runs / "cut"
    for name in ("last.safetensors", "ema.safetensors", "checkpoints/epoch_0002/optimizer-generator.safetensors",
                 "checkpoints/epoch_0002/optimizer-discriminator.safetensors",
                 "checkpoints/epoch_0002/optimizer-generator_ema.safetensors"):
        a, _ = load_weights(full / name)
        b, _ = load_weights(cut / name)
        assert a.keys() == b.keys() and a, name
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)
    # 3 steps an epoch and n_critic 5: the only generator step (step 4) falls in epoch 2, after the resume
    rows = (full / "history.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert {"train_discriminator_loss", "train_discriminator_wasserstein_estimate",
            "train_discriminator_gradient_penalty", "train_generator_loss"} <= set(header)
    first = dict(zip(header, rows[1].split(",")))
    assert first["train_generator_loss"] == ""
    weights, _ = load_weights(full / "last.safetensors")
    averaged, _ = load_weights(full / "ema.safetensors")
    assert not torch.equal(weights["generator.to_image.0.weight"], averaged["generator.to_image.0.weight"])


def _png(path):
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image).copy()


def test_sample_grid_is_the_fixed_noise_and_canon_sample_repeats_with_its_seed(wgan_runs, tmp_path, capsys):
    run = wgan_runs / "full"
    grids = [run / "samples" / "epoch_001.png", run / "samples" / "epoch_002.png"]
    assert all(p.is_file() for p in grids)
    # the epoch's grid is 64 samples of z from --sample-seed 0 with the averaged weights: canon sample, seed 0
    assert canon_main(["sample", str(run), "--num", "64", "--seed", "0", "--out", str(tmp_path / "s0.png")]) == 0
    assert np.array_equal(_png(tmp_path / "s0.png"), _png(grids[1]))
    assert not np.array_equal(_png(grids[0]), _png(grids[1]))  # the generator moved in epoch 2
    for name in ("a", "b"):
        assert canon_main(["sample", str(run), "--num", "9", "--seed", "3", "--nrow", "3",
                           "--out", str(tmp_path / f"{name}.png")]) == 0
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    assert canon_main(["sample", str(run), "--num", "9", "--seed", "4", "--nrow", "3",
                       "--out", str(tmp_path / "c.png")]) == 0
    assert not np.array_equal(_png(tmp_path / "a.png"), _png(tmp_path / "c.png"))
    assert _png(tmp_path / "a.png").shape == (3 * 10 + 2, 3 * 10 + 2)  # 3×3 images of 8 px, 2 px padding
    assert "wrote" in capsys.readouterr().out


# ----------------------------------------------------------------------------- metrics
def _scipy_frechet(a: np.ndarray, b: np.ndarray) -> float:
    from scipy import linalg

    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(root))


def test_frechet_distance_and_mode_coverage_are_wired_to_the_classifiers_features():
    torch.manual_seed(0)
    task, data = _digits_run("dcgan_32", fid_samples=300, model_kwargs={"image_size": 8, "base_channels": 2,
                                                                         "latent_dim": 4})
    model = canon.create_model("dcgan_32", in_chans=1, image_size=8, base_channels=2, latent_dim=4)
    # a "classifier" on 12×12 inputs whose penultimate features are the normalised pixels themselves
    classifier = nn.Sequential(nn.Flatten(), nn.Linear(144, 10))
    mean, std = 0.3, 0.4
    task.classifier = ClassifierFeatures(classifier, input_size=(12, 12), mean=[mean], std=[std],
                                         class_names=list(data.info.class_names), in_chans=1)
    loader = torch.utils.data.DataLoader(data.test, batch_size=64)
    result = task.evaluate(model, loader)

    def features(unit_images):  # the classification task's own pipeline: resize, then normalise, per image
        return np.stack([T.normalize(T.resize(img, (12, 12)), [mean], [std]).flatten().double().numpy()
                         for img in unit_images])

    real = features([to_unit_range(data.test[i][0], (-1, 1)) for i in range(len(data.test))])
    model.eval()
    with torch.no_grad():
        fake_images = to_unit_range(model.sample(300, generator=torch.Generator().manual_seed(1)), (-1, 1))
    fake = features(fake_images)
    assert result["test_fid"] == pytest.approx(_scipy_frechet(real, fake), rel=1e-5)
    predicted = classifier(torch.from_numpy(fake).float()).argmax(1)
    shares = torch.bincount(predicted, minlength=10).double() / 300
    assert result["test_min_class_share"] == pytest.approx(float(shares.min()))
    assert result["test_classes_covered"] == int((shares >= 0.05).sum())


def test_likelihood_evaluation_in_nats_and_bits_per_dimension():
    torch.manual_seed(0)
    task, data = _digits_run("vae", importance_samples=20)
    model = canon.create_model("vae", in_chans=1).eval()
    loader = torch.utils.data.DataLoader(data.test, batch_size=128)
    result = task.evaluate(model, loader)
    x = torch.stack([data.test[i][0] for i in range(len(data.test))])
    assert set(x.unique().tolist()) <= {0.0, 1.0}  # binarised for the Bernoulli decoder
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        elbo, nll = [], []
        for batch in x.split(128):
            elbo.append(model.elbo(batch, generator=g))
            nll.append(model.nll(batch, num_samples=20, generator=g))
    assert result["test_nll"] == pytest.approx(float(torch.cat(nll).double().mean()), rel=1e-6)
    assert result["test_elbo"] == pytest.approx(float(torch.cat(elbo).double().mean()), rel=1e-6)
    assert result["test_bits_per_dim"] == pytest.approx(result["test_nll"] / (784 * math.log(2)))
    assert result["test_nll"] <= -result["test_elbo"] + 1.0  # the k = 20 bound is tighter than the ELBO


# ----------------------------------------------------------------------------- data
def test_binarisation_is_fixed_per_image_and_follows_the_grey_levels():
    image = torch.full((1, 64, 64), 0.3)
    first, again = binarize(image, "stochastic", seed=7), binarize(image, "stochastic", seed=7)
    assert torch.equal(first, again) and not torch.equal(first, binarize(image, "stochastic", seed=8))
    assert abs(float(first.mean()) - 0.3) < 0.03
    assert torch.equal(binarize(torch.tensor([[[0.2, 0.5, 0.51]]]), "threshold"), torch.tensor([[[0.0, 0.0, 1.0]]]))


def test_generation_images_resize_binarise_quantise_and_map_the_range():
    digits = build_dataset("digits", split="test")
    image, label = digits[5]
    grey = GenerationImages(digits, image_size=28, data_range=(-1.0, 1.0), binarize_mode=None, num_levels=None)
    x, y = grey[5]
    assert y == label and x.shape == (1, 28, 28)
    torch.testing.assert_close(x, T.resize(image, (28, 28)) * 2 - 1)
    binary = GenerationImages(digits, image_size=28, data_range=(0.0, 1.0), binarize_mode="stochastic",
                              num_levels=None, split_offset=1)
    torch.testing.assert_close(binary[5][0], binarize(T.resize(image, (28, 28)), "stochastic", seed=2 * 5 + 1))
    levels = GenerationImages(digits, image_size=28, data_range=(0.0, 1.0), binarize_mode=None, num_levels=4)
    assert set((levels[5][0] * 3).unique().tolist()) <= {0.0, 1.0, 2.0, 3.0}


def test_cyclegan_domains_are_disjoint_and_every_image_is_seen():
    task, data = _digits_run("cyclegan_32", classes="3,8",
                             model_kwargs={"base_channels": 2, "num_blocks": 1, "discriminator_channels": 2})
    train_set, test_set = data.train, data.test
    assert isinstance(train_set, UnpairedDomains) and isinstance(test_set, DomainImages)
    a_sources = {train_set.a.dataset.targets[i].item() for i in train_set.a.indices}
    b_sources = {train_set.b.dataset.targets[i].item() for i in train_set.b.indices}
    assert a_sources == {3} and b_sources == {8}
    assert not set(train_set.a.indices) & set(train_set.b.indices)
    seen_a = {i % len(train_set.a) for i in range(len(train_set))}
    assert seen_a == set(range(len(train_set.a)))  # every image of A once an epoch
    domains = [test_set[i][1] for i in range(len(test_set))]
    assert domains.count(0) == len(test_set.a) and domains.count(1) == len(test_set.b)
    held_out = build_dataset("digits", split="test").targets
    assert len(test_set.a) == int((held_out == 3).sum()) and len(test_set.b) == int((held_out == 8).sum())


def test_image_grid_places_images_row_by_row():
    images = torch.arange(3, dtype=torch.float32).view(3, 1, 1, 1) / 2
    grid = image_grid(images, nrow=2, padding=1, pad_value=1.0)
    assert grid.shape == (1, 5, 5)
    assert grid[0, 1, 1] == 0.0 and grid[0, 1, 3] == 0.5 and grid[0, 3, 1] == 1.0 and grid[0, 3, 3] == 1.0


# ----------------------------------------------------------------------------- the command line
@pytest.fixture(scope="module")
def digits_classifier(tmp_path_factory):
    out = tmp_path_factory.mktemp("generation-classifier") / "lenet5"
    train("lenet5", data="digits", epochs=1, batch_size=32, lr=0.05, seed=0, out=str(out), progress=False,
          max_steps_per_epoch=10, device="cpu")
    return out


@pytest.mark.slow
def test_train_eval_sample_through_the_cli(tmp_path, digits_classifier, capsys):
    run = tmp_path / "dcgan"
    assert canon_main(["train", "dcgan_32", "--data", "digits", "--epochs", "1", "--max-steps-per-epoch", "2",
                       "--batch-size", "8", "--model-arg", "base_channels=2", "--model-arg", "latent_dim=4",
                       "--fid-classifier", str(digits_classifier), "--fid-samples", "100", "--out", str(run),
                       "--quiet", "--device", "cpu"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test_fid"] > 0 and 0 <= metrics["test_classes_covered"] <= 10
    assert {"train_discriminator_loss", "train_generator_loss"} <= set((run / "history.csv").read_text()
                                                                       .splitlines()[0].split(","))
    assert (run / "samples" / "epoch_001.png").is_file() and (run / "curves.png").is_file()
    assert canon_main(["eval", str(run), "--data", "digits", "--json", "--device", "cpu"]) == 0
    result = json.loads((run / "eval.json").read_text())
    assert result["test_fid"] == pytest.approx(metrics["test_fid"], rel=1e-6)  # the same samples again
    assert set(result["class_shares"]) == {str(d) for d in range(10)} and "not Inception" in result["fid_note"]
    assert (run / "samples.png").is_file()
    assert canon_main(["sample", str(run), "--num", "4", "--out", str(tmp_path / "grid.png")]) == 0
    assert _png(tmp_path / "grid.png").shape == (32 + 4, 4 * 34 + 2)  # one row of four 32 px images
    capsys.readouterr()


@pytest.mark.slow
def test_cyclegan_and_likelihood_models_through_the_cli(tmp_path, digits_classifier, capsys):
    run = tmp_path / "cycle"
    assert canon_main(["train", "cyclegan_32", "--data", "digits", "--classes", "3,8", "--epochs", "1",
                       "--max-steps-per-epoch", "2", "--batch-size", "4", "--model-arg", "base_channels=2",
                       "--model-arg", "num_blocks=1", "--model-arg", "discriminator_channels=2",
                       "--fid-classifier", str(digits_classifier), "--out", str(run), "--quiet",
                       "--device", "cpu"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0 <= metrics["test_translated_rate"] <= 1 and metrics["test_cycle_error"] > 0
    assert (run / "samples" / "epoch_001.png").is_file()
    digits = build_dataset("digits", split="test")
    from canon.tasks.generation import save_png

    image = save_png(digits[0][0], tmp_path / "digit.png")
    capsys.readouterr()
    assert canon_main(["predict", str(run / "last.safetensors"), str(image), "--save-dir", str(tmp_path / "out"),
                       "--json"]) == 0
    translated = json.loads(capsys.readouterr().out)[0]["translated"]
    assert set(translated) == {"3", "8"} and all(_png(p).shape == (32, 32) for p in translated.values())
    assert canon_main(["sample", str(run), "--out", str(tmp_path / "x.png")]) == 2  # CycleGAN has no noise
    assert "canon predict" in capsys.readouterr().err

    vae_run = tmp_path / "vae"
    assert canon_main(["train", "vae", "--data", "digits", "--epochs", "1", "--max-steps-per-epoch", "3",
                       "--batch-size", "16", "--importance-samples", "5", "--out", str(vae_run), "--quiet",
                       "--device", "cpu"]) == 0
    capsys.readouterr()
    metrics = json.loads((vae_run / "metrics.json").read_text())
    assert metrics["test_nll"] > 0 and metrics["test_elbo"] < 0
    assert metrics["test_bits_per_dim"] == pytest.approx(metrics["test_nll"] / (784 * math.log(2)))
    assert canon_main(["predict", str(vae_run), str(image), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["nll_nats"] > 0


# ----------------------------------------------------------------------------- errors
def test_errors_name_the_fix(tmp_path, capsys):
    with pytest.raises(ValueError, match="--lr would be ignored.*--recipe flags"):
        GenerationTask().configure_optimizers(canon.create_model("dcgan_32", base_channels=2),
                                              TrainConfig(model="dcgan_32", lr=1e-3))
    with pytest.raises(ValueError, match="--accumulate 2"):
        GenerationTask().configure_optimizers(canon.create_model("dcgan_32", base_channels=2),
                                              TrainConfig(model="dcgan_32", accumulate=2))
    with pytest.raises(ValueError, match="--classes A,B"):
        _digits_run("cyclegan_32", model_kwargs={"base_channels": 2, "num_blocks": 1})
    with pytest.raises(ValueError, match=r"'33' \(did you mean '3'\?\) not among"):
        _digits_run("dcgan_32", classes="3,33", model_kwargs={"base_channels": 2})
    with pytest.raises(ValueError, match="3-channel images"):
        _digits_run("dcgan_32", model_kwargs={"base_channels": 2, "in_chans": 3})
    with pytest.raises(ValueError, match="averages a generator"):
        GenerationTask(ema=0.9).configure_optimizers(canon.create_model("vae"), TrainConfig(model="vae"))
    for bad in ({"ema": 1.5}, {"binarize": "coin"}, {"classes": "3,3"}, {"fid_samples": 1}, {"recipe": "mine"}):
        with pytest.raises(ValueError):
            GenerationOptions(**bad)
    task, _ = _digits_run("dcgan_32", model_kwargs={"base_channels": 2})
    task.classifier = ClassifierFeatures(nn.Linear(4, 2), input_size=(2, 2), mean=[0], std=[1], class_names=["a", "b"],
                                         in_chans=1)
    with pytest.raises(ValueError, match="same data"):
        task._check_classifier()
    with pytest.raises(ValueError, match="3-channel"):
        ClassifierFeatures(nn.Linear(4, 2), input_size=(2, 2), mean=[0] * 3, std=[1] * 3, class_names=["a", "b"],
                           in_chans=3)(torch.zeros(1, 1, 2, 2))
    assert canon_main(["sample", str(tmp_path / "nothing"), "--out", str(tmp_path / "x.png")]) == 2
    assert canon_main(["train", "dcgan_32", "--data", "digits", "--lr", "0.1", "--out", str(tmp_path / "r"),
                       "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "checkpoint not found" in err and "--recipe flags" in err
