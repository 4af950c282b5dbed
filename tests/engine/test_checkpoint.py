"""Checkpoints: safetensors round trip, no pickle, truncation and interruption handled."""
import json

import pytest
import torch
import torch.nn as nn

from canon.engine.checkpoint import (
    CheckpointError, latest_checkpoint_dir, load_training_checkpoint, load_weights, save_training_checkpoint,
    save_weights,
)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 3)
        self.bn = nn.BatchNorm1d(3)


def test_weights_round_trip_is_exact(tmp_path):
    torch.manual_seed(0)
    m = Tiny()
    m.bn.running_mean.uniform_()
    save_weights(tmp_path / "w.safetensors", m, extra={"epoch": 3})
    state, meta = load_weights(tmp_path / "w.safetensors")
    assert set(state) == set(m.state_dict())
    for k, v in m.state_dict().items():
        assert torch.equal(state[k], v)
    assert meta["extra"] == {"epoch": 3}
    # It is a safetensors file (8-byte little-endian header length, then JSON), not a pickle.
    raw = (tmp_path / "w.safetensors").read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    assert json.loads(raw[8:8 + header_len])["__metadata__"]["format"] == "canon-checkpoint-1"


def test_truncated_and_pickled_files_are_refused(tmp_path):
    m = Tiny()
    path = tmp_path / "w.safetensors"
    save_weights(path, m)
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(CheckpointError, match="w.safetensors"):
        load_weights(path)
    evil = tmp_path / "evil.safetensors"
    torch.save({"a": torch.zeros(1)}, evil)  # a pickle in disguise
    with pytest.raises(CheckpointError, match="evil.safetensors"):
        load_weights(evil)
    with pytest.raises(CheckpointError, match="not found"):
        load_weights(tmp_path / "missing.safetensors")


def test_training_checkpoint_restores_optimizer_scheduler_and_rng(tmp_path):
    torch.manual_seed(0)
    m = Tiny()
    opt = torch.optim.Adam(m.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    for _ in range(3):
        opt.zero_grad()
        m.a(torch.randn(2, 4)).sum().backward()
        opt.step()
        sched.step()
    save_training_checkpoint(tmp_path, epoch=3, model=m, optimizer=opt, scheduler=sched, state={"history": []})
    expected_next = torch.rand(3)

    m2 = Tiny()
    opt2 = torch.optim.Adam(m2.parameters(), lr=0.1)
    sched2 = torch.optim.lr_scheduler.StepLR(opt2, step_size=1, gamma=0.5)
    torch.manual_seed(123)
    payload = load_training_checkpoint(tmp_path, model=m2, optimizer=opt2, scheduler=sched2)
    assert payload["epoch"] == 3
    assert torch.equal(torch.rand(3), expected_next)  # RNG continues where it was saved
    assert sched2.get_last_lr() == sched.get_last_lr()
    for (k, a), (_, b) in zip(opt.state_dict()["state"].items(), opt2.state_dict()["state"].items()):
        for name in a:
            assert torch.equal(torch.as_tensor(a[name]), torch.as_tensor(b[name])), (k, name)


def test_only_complete_epochs_are_resumed(tmp_path):
    m = Tiny()
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    save_training_checkpoint(tmp_path, epoch=1, model=m, optimizer=opt, scheduler=None, state={"history": []})
    # A crash while writing epoch 2 leaves a temporary folder behind, never a LAST pointer to it.
    (tmp_path / "checkpoints" / ".epoch_0002.abc").mkdir()
    assert latest_checkpoint_dir(tmp_path).name == "epoch_0001"
    save_training_checkpoint(tmp_path, epoch=2, model=m, optimizer=opt, scheduler=None, state={"history": []})
    assert latest_checkpoint_dir(tmp_path).name == "epoch_0002"
    assert not (tmp_path / "checkpoints" / "epoch_0001").exists()  # older folders pruned after the move
