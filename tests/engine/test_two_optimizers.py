"""A task with two optimizers (a GAN's shape) through the Trainer: every parameter after three steps
equals the update written out by hand, and resuming such a run is bit-exact."""
import json

import pytest
import torch

from canon.engine import TrainConfig, Trainer
from canon.engine.checkpoint import load_weights

from toy_tasks import TwoPlayerTask, TwoPlayers, registered, toy_two_players


@pytest.fixture
def two_players():
    with registered(toy_two_players, TwoPlayers, TwoPlayerTask) as name:
        yield name


def _config(tmp_path, name, **overrides):
    base = dict(model=name, epochs=1, batch_size=2, scheduler="constant", weight_decay=0.0, seed=0,
                out=str(tmp_path / "run"), progress=False, device="cpu")
    base.update(overrides)
    return TrainConfig(**base)


def test_three_steps_equal_the_hand_computed_updates(tmp_path, two_players):
    lr_a, lr_b = 0.1, 0.05
    Trainer(_config(tmp_path, two_players, max_steps_per_epoch=3), TwoPlayerTask(lr_a=lr_a, lr_b=lr_b)).fit()
    weights, _ = load_weights(tmp_path / "run" / "last.safetensors")

    a, b = 1.0, 0.5
    for k, xs in enumerate([(1.0, 2.0), (3.0, 4.0), (5.0, 6.0)]):  # batches of 2 in the task's fixed order
        # a: d/da mean((a x - b)^2) = mean(2 (a x - b) x)
        a -= lr_a * sum(2 * (a * x - b) * x for x in xs) / len(xs)
        if k % 2 == 1:  # b steps after batches 1, 3, ...: d/db mean((b - a x)^2) = mean(2 (b - a x)), new a
            b -= lr_b * sum(2 * (b - a * x) for x in xs) / len(xs)
    assert weights["a"].item() == pytest.approx(a, rel=1e-6)
    assert weights["b"].item() == pytest.approx(b, rel=1e-6)
    assert (a, b) != pytest.approx((1.0, 0.5))  # both players moved

    header = (tmp_path / "run" / "history.csv").read_text().splitlines()[0].split(",")
    assert {"lr_a", "lr_b", "train_loss_a", "train_loss_b", "test_gap"} <= set(header)


def test_resume_of_a_two_optimizer_run_is_bit_exact(tmp_path, two_players):
    # Adam for b (optimizer state to restore), noise from the global RNG in every step (its state too).
    options = dict(adam_b=True, noise=0.3, b_every=3)
    common = dict(epochs=3, batch_size=2, scheduler="cosine")
    Trainer(_config(tmp_path / "full", two_players, **common), TwoPlayerTask(**options)).fit()

    # Interrupted in the middle of epoch 2 (step 6 of 4 per epoch), then resumed with --resume.
    interrupted = Trainer(_config(tmp_path / "cut", two_players, **common),
                          TwoPlayerTask(**options, interrupt_at_step=6))
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit()
    state = json.loads((tmp_path / "cut" / "run" / "checkpoints" / "epoch_0001" / "state.json").read_text())
    assert sorted(state["optimizers"]) == ["a", "b"] and sorted(state["schedulers"]) == ["a", "b"]
    Trainer(_config(tmp_path / "cut", two_players, resume=True, **common), TwoPlayerTask(**options)).fit()

    full, _ = load_weights(tmp_path / "full" / "run" / "last.safetensors")
    resumed, _ = load_weights(tmp_path / "cut" / "run" / "last.safetensors")
    assert full.keys() == resumed.keys()
    for key in full:
        assert torch.equal(full[key], resumed[key]), key
    a_full, _ = load_weights(tmp_path / "full" / "run" / "checkpoints" / "epoch_0003" / "optimizer-b.safetensors")
    a_cut, _ = load_weights(tmp_path / "cut" / "run" / "checkpoints" / "epoch_0003" / "optimizer-b.safetensors")
    for key in a_full:
        assert torch.equal(a_full[key], a_cut[key]), key
