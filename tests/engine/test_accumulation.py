"""--accumulate N: N micro-batches give the same update as one batch N times larger."""
import pytest
import torch

from canon.engine import TrainConfig, Trainer
from canon.engine.checkpoint import load_weights
from canon.engine.data import plan_epoch
from canon.tasks import train

from toy_tasks import Linear, RegressionTask, registered, toy_linear


def _max_difference(a_path, b_path):
    a, _ = load_weights(a_path)
    b, _ = load_weights(b_path)
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_lenet5_four_micro_batches_of_8_equal_one_batch_of_32(tmp_path):
    # LeNet-5 has no batch norm (whose statistics would differ per micro-batch) and no dropout.
    common = dict(data="digits", epochs=1, batch_size=32, lr=0.05, optimizer="sgd", augment="none",
                  max_steps_per_epoch=5, seed=1, progress=False, device="cpu", threads=1)
    train("lenet5", out=str(tmp_path / "one"), **common)
    train("lenet5", out=str(tmp_path / "four"), accumulate=4, **common)
    difference = _max_difference(tmp_path / "one" / "last.safetensors", tmp_path / "four" / "last.safetensors")
    assert difference < 1e-6, difference
    # ... and it is a real comparison: five steps moved the weights far more than that
    start = tmp_path / "start"
    train("lenet5", out=str(start), **{**common, "lr": 0.0, "max_steps_per_epoch": 1})
    assert _max_difference(start / "last.safetensors", tmp_path / "one" / "last.safetensors") > 1e-3


def test_uneven_batches_and_micro_batches_weigh_by_their_sizes(tmp_path):
    """64 samples in batches of 24 (24, 24, 16) cut into 5 micro-batches of 3-5 samples: each
    micro-batch's mean loss weighs its share of the batch, so the epoch equals full batches."""
    plan = plan_epoch(64, 24, seed=0, epoch=0, accumulate=5)
    assert [len(indices) for indices, _ in plan.steps[2]] == [3, 3, 3, 3, 4]
    assert [round(weight * 16) for _, weight in plan.steps[2]] == [3, 3, 3, 3, 4]
    with registered(toy_linear, Linear, RegressionTask) as name:
        common = dict(model=name, epochs=2, batch_size=24, lr=0.1, optimizer="sgd", momentum=0.9, weight_decay=0.0,
                      progress=False, device="cpu")
        Trainer(TrainConfig(out=str(tmp_path / "one"), **common), RegressionTask()).fit()
        Trainer(TrainConfig(out=str(tmp_path / "five"), accumulate=5, **common), RegressionTask()).fit()
    difference = _max_difference(tmp_path / "one" / "last.safetensors", tmp_path / "five" / "last.safetensors")
    assert difference < 1e-6, difference


def test_a_batch_too_small_for_its_micro_batches_is_refused():
    with pytest.raises(ValueError, match="--batch-size 4 must be at least processes x --accumulate = 1 x 8"):
        plan_epoch(100, 4, seed=0, epoch=0, accumulate=8)
    with pytest.raises(ValueError, match="--accumulate must be a whole number >= 1, got 0"):
        TrainConfig(model="lenet5", accumulate=0)


def test_plans_of_two_processes_cut_the_one_process_batches():
    one = plan_epoch(50, 8, seed=3, epoch=2)
    ranks = [plan_epoch(50, 8, seed=3, epoch=2, world_size=2, rank=r) for r in (0, 1)]
    assert len(one) == len(ranks[0]) == len(ranks[1]) == 7  # ceil(50 / 8); the last batch holds 2
    for k in range(len(one)):
        (whole, weight), = one.steps[k]
        parts = [ranks[r].steps[k][0][0] for r in (0, 1)]
        assert parts[0] + parts[1] == whole and weight == 1.0
        # weights n * P / b: the two processes' mean losses average to the batch's mean
        assert sum(ranks[r].steps[k][0][1] for r in (0, 1)) == pytest.approx(2.0)
    # the same order as DataLoader(shuffle=True, generator=manual_seed(seed * 100003 + epoch)) gives
    loader = torch.utils.data.DataLoader(range(50), batch_size=8, shuffle=True,
                                         generator=torch.Generator().manual_seed(3 * 100_003 + 2))
    assert [b.tolist() for b in loader] == [step[0][0] for step in one.steps]
