"""Our schedules against torch's own scheduler classes, step by step."""
import pytest
import torch
from torch.optim import lr_scheduler as L

from canon.engine.optim import OPTIMIZERS, build_optimizer, build_scheduler


def _lrs(make, steps):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1)
    sched = make(opt)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


EPOCHS, SPE = 6, 7
TOTAL = EPOCHS * SPE


def ours(name, **kw):
    return lambda opt: build_scheduler(name, opt, epochs=EPOCHS, steps_per_epoch=SPE, **kw)


@pytest.mark.parametrize("name,reference", [
    ("cosine", lambda opt: L.CosineAnnealingLR(opt, T_max=TOTAL, eta_min=0.0)),
    ("poly", lambda opt: L.PolynomialLR(opt, total_iters=TOTAL, power=0.9)),
    ("step", lambda opt: L.StepLR(opt, step_size=2 * SPE, gamma=0.1)),  # ceil(6 / 3) = 2 epochs
    ("constant", lambda opt: L.ConstantLR(opt, factor=1.0, total_iters=0)),
])
def test_schedule_matches_torch(name, reference):
    assert _lrs(ours(name), TOTAL) == pytest.approx(_lrs(reference, TOTAL), rel=1e-6, abs=1e-12)


def test_warmup_linear_matches_torch_sequence():
    warm = SPE  # one epoch of warm-up

    def reference(opt):
        up = L.LinearLR(opt, start_factor=1 / warm, end_factor=1.0, total_iters=warm - 1)
        down = L.LinearLR(opt, start_factor=1.0, end_factor=0.0, total_iters=TOTAL - warm)
        return L.SequentialLR(opt, [up, down], milestones=[warm])

    got = _lrs(ours("warmup-linear", warmup_epochs=1), TOTAL)
    assert got == pytest.approx(_lrs(reference, TOTAL), rel=1e-6, abs=1e-12)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_reduces_a_quadratic(name):
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(5))
    opt = build_optimizer(name, [w], lr=0.1 if name != "adagrad" else 0.5)
    start = (w ** 2).sum().item()
    for _ in range(50):
        opt.zero_grad()
        (w ** 2).sum().backward()
        opt.step()
    assert (w ** 2).sum().item() < 0.5 * start


def test_unknown_names_say_what_is_valid():
    with pytest.raises(ValueError, match="adamw"):
        build_optimizer("adamx", [torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match="poly"):
        build_scheduler("polynomial", opt, epochs=1, steps_per_epoch=1)
