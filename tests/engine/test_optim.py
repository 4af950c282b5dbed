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


def test_multistep_drops_at_its_milestones_like_torch():
    reference = lambda opt: L.MultiStepLR(opt, milestones=[2 * SPE, 5 * SPE], gamma=0.1)  # noqa: E731
    got = _lrs(ours("multistep", milestones=(2, 5)), TOTAL)
    assert got == pytest.approx(_lrs(reference, TOTAL), rel=1e-6, abs=1e-12)


def test_inverse_sqrt_is_the_transformer_formula():
    """lr = d_model^-0.5 * min(n^-0.5, n * w^-1.5), n = step + 1 (Vaswani et al. 2017, eq. 3), written out."""
    d_model, warmup = 512, 10
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p], lr=1.0, betas=(0.9, 0.98), eps=1e-9)
    sched = build_scheduler("inverse-sqrt", opt, epochs=10, steps_per_epoch=10, warmup_steps=warmup, d_model=d_model)
    seen = []
    for _ in range(100):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [d_model ** -0.5 * min(n ** -0.5, n * warmup ** -1.5) for n in range(1, 101)]
    assert seen == pytest.approx(expected, rel=1e-12)
    peak = max(range(100), key=lambda i: seen[i])
    assert peak + 1 == warmup  # rises for w steps, then decays as n^-0.5
    with pytest.raises(ValueError, match="needs d_model"):
        build_scheduler("inverse-sqrt", opt, epochs=1, steps_per_epoch=1)


@pytest.mark.parametrize("name", ["cosine", "poly", "warmup-linear", "step", "multistep"])
def test_per_step_warmup_then_the_schedule(name):
    """--warmup-steps w: (s + 1) / w for s < w, then the schedule's own formula at step s."""
    import math

    warm, power = 5, 0.9
    got = _lrs(ours(name, warmup_steps=warm, milestones=(3,)), TOTAL)
    for s, lr in enumerate(got):
        if s < warm:
            expected = (s + 1) / warm
        elif name == "cosine":
            expected = 0.5 * (1 + math.cos(math.pi * (s - warm) / (TOTAL - warm)))
        elif name == "warmup-linear":
            expected = 1 - (s - warm) / (TOTAL - warm)
        elif name == "poly":
            expected = (1 - s / TOTAL) ** power
        elif name == "step":
            expected = 0.1 ** ((s // SPE) // 2)  # ceil(6 / 3) = 2 epochs a step
        else:
            expected = 0.1 ** int(s // SPE >= 3)
        assert lr == pytest.approx(0.1 * expected, rel=1e-9, abs=1e-15), (s, lr, expected)


def test_adam_takes_betas_and_eps():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = build_optimizer("adamw", [p], lr=1e-3, betas=(0.9, 0.98), eps=1e-9)
    assert opt.param_groups[0]["betas"] == (0.9, 0.98) and opt.param_groups[0]["eps"] == 1e-9
