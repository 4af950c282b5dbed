"""Data-parallel training with torchrun (gloo on CPU): the same weights as one process, a restarted
worker that finishes with the weights of an uninterrupted run, and batch norm synchronised over
the processes."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

from canon.engine.checkpoint import load_weights

TIMEOUT = 300  # seconds for one launch: two processes importing torch and training a few steps


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT", "CANON_FAULT_AT_STEP")}
    env.update(OMP_NUM_THREADS="1", **extra)
    return env


def _canon_train(args, *, processes: int | None, env=None, torchrun_args=()):
    if processes is None:
        cmd = [sys.executable, "-m", "canon", "train", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
               *torchrun_args, "-m", "canon", "train", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, env=env or _env())


def _weights(run):
    weights, meta = load_weights(run / "last.safetensors")
    return weights, meta


@pytest.mark.slow
def test_two_processes_with_half_batches_give_the_weights_of_one_process(tmp_path):
    # LeNet-5 (no batch norm), no augmentation: the data order is the only randomness, and it
    # depends on (seed, epoch) alone.
    common = ["lenet5", "--data", "digits", "--epochs", "2", "--max-steps-per-epoch", "5", "--batch-size", "32",
              "--lr", "0.05", "--augment", "none", "--seed", "3", "--threads", "1", "--quiet"]
    one = _canon_train(common + ["--out", str(tmp_path / "one")], processes=None)
    assert one.returncode == 0, one.stderr
    two = _canon_train(common + ["--out", str(tmp_path / "two")], processes=2)
    assert two.returncode == 0, two.stderr[-3000:]
    a, _ = _weights(tmp_path / "one")
    b, meta = _weights(tmp_path / "two")
    difference = max((a[k] - b[k]).abs().max().item() for k in a)
    assert difference < 1e-5, difference
    assert meta["extra"]["epoch"] == 2
    # rank 0 alone wrote the run folder: one history with both epochs, one metrics.json
    assert (tmp_path / "two" / "history.csv").read_text().count("\n") == 3
    assert two.stdout.count('"best_test_accuracy"') == 1  # the result printed once, not once per process


@pytest.mark.slow
def test_a_worker_killed_mid_epoch_is_restarted_and_ends_with_the_uninterrupted_weights(tmp_path):
    # Augmentation on: every process draws its own crops, so the restart must restore both streams.
    common = ["lenet5", "--data", "digits", "--epochs", "2", "--max-steps-per-epoch", "6", "--batch-size", "32",
              "--lr", "0.05", "--seed", "5", "--threads", "1", "--quiet"]
    full = _canon_train(common + ["--out", str(tmp_path / "full")], processes=2)
    assert full.returncode == 0, full.stderr[-3000:]
    # Rank 1 dies at optimizer step 9 (epoch 2, after the epoch-1 checkpoint); torchrun restarts both.
    killed = _canon_train(common + ["--out", str(tmp_path / "killed")], processes=2,
                          env=_env(CANON_FAULT_AT_STEP="1:9"), torchrun_args=["--max-restarts=1"])
    assert killed.returncode == 0, killed.stderr[-3000:]
    assert "rank 1 exits at step 9" in killed.stderr
    assert "resumed from" in killed.stderr and "torchrun restart 1" in killed.stderr
    a, _ = _weights(tmp_path / "full")
    b, _ = _weights(tmp_path / "killed")
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _sync_bn_worker(rank: int, world: int, init_file: str, x: torch.Tensor, dy: torch.Tensor, out: str):
    import torch.distributed as dist

    from canon.engine.distributed import SyncBatchNorm2d

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)
    bn = SyncBatchNorm2d(3, momentum=0.3)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.5, -0.5, 2.0]))
        bn.bias.copy_(torch.tensor([0.1, 0.2, -0.3]))
    share = slice(rank * len(x) // world, (rank + 1) * len(x) // world)
    xs = x[share].clone().requires_grad_(True)
    y = bn(xs)
    # this process's loss is its share of sum(y * dy): the input gradient must be the whole sum's,
    # and the parameter gradients, summed over the processes, the whole sum's too
    (y * dy[share]).sum().backward()
    for p in (bn.weight, bn.bias):
        dist.all_reduce(p.grad)
    torch.save({"y": y.detach(), "dx": xs.grad, "dweight": bn.weight.grad, "dbias": bn.bias.grad,
                "running_mean": bn.running_mean, "running_var": bn.running_var}, f"{out}.{rank}")
    dist.destroy_process_group()


@pytest.mark.slow
def test_sync_batch_norm_over_two_processes_equals_batch_norm_of_the_whole_batch(tmp_path):
    import torch.multiprocessing as mp

    torch.manual_seed(1)
    x = torch.randn(6, 3, 5, 4) * 3 + 1
    dy = torch.randn(6, 3, 5, 4)
    mp.spawn(_sync_bn_worker, args=(2, str(tmp_path / "init"), x, dy, str(tmp_path / "out")), nprocs=2, join=True)
    parts = [torch.load(tmp_path / f"out.{r}") for r in (0, 1)]

    reference = nn.BatchNorm2d(3, momentum=0.3)
    with torch.no_grad():
        reference.weight.copy_(torch.tensor([1.5, -0.5, 2.0]))
        reference.bias.copy_(torch.tensor([0.1, 0.2, -0.3]))
    xr = x.clone().requires_grad_(True)
    y = reference(xr)
    (y * dy).sum().backward()
    torch.testing.assert_close(torch.cat([p["y"] for p in parts]), y.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.cat([p["dx"] for p in parts]), xr.grad, rtol=1e-4, atol=1e-5)
    for part in parts:
        torch.testing.assert_close(part["dweight"], reference.weight.grad, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(part["dbias"], reference.bias.grad, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(part["running_mean"], reference.running_mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(part["running_var"], reference.running_var, rtol=1e-5, atol=1e-6)


def test_sync_batch_norm_converts_every_batch_norm_and_is_batch_norm_in_one_process():
    from canon import create_model
    from canon.engine.distributed import SyncBatchNorm2d, convert_sync_batchnorm

    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=10, in_chans=1, small_input=True)
    plain = {k: v.clone() for k, v in model.state_dict().items()}
    converted = convert_sync_batchnorm(model, torch.device("cpu"))
    norms = [m for m in converted.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(type(m) is SyncBatchNorm2d for m in norms)
    assert converted.state_dict().keys() == plain.keys()  # the same checkpoint layout
    x = torch.randn(4, 1, 32, 32)
    reference = create_model("resnet18", num_classes=10, in_chans=1, small_input=True)
    reference.load_state_dict(plain)
    torch.testing.assert_close(converted.train()(x), reference.train()(x))
