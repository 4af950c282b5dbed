"""Normalization layers from their formulas against torch.nn.functional / torch.nn (1e-5, forward and backward)."""
from __future__ import annotations


import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from canon.layers import (BatchNorm2d, GroupNorm, InstanceNorm2d, LayerNorm, LocalResponseNorm, batch_norm,
                          group_norm, instance_norm, layer_norm, local_response_norm)

TOL = dict(rtol=1e-5, atol=1e-5)


def assert_same_forward_backward(ours_fn, ref_fn, *inputs):
    """Same output and same gradients with respect to every input, for one random upstream gradient."""
    ours_in = [t.detach().clone().requires_grad_() for t in inputs]
    ref_in = [t.detach().clone().requires_grad_() for t in inputs]
    ours, ref = ours_fn(*ours_in), ref_fn(*ref_in)
    torch.testing.assert_close(ours, ref, **TOL)
    g = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(ours, ours_in, g), torch.autograd.grad(ref, ref_in, g)):
        torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("shape", [(8, 4, 5, 6), (16, 3), (4, 3, 7)])
def test_batch_norm_training_matches_torch_including_running_stats(shape):
    torch.manual_seed(0)
    x = torch.randn(*shape) * 3 + 1
    c = shape[1]
    weight, bias = torch.randn(c), torch.randn(c)
    ours_rm, ours_rv = torch.randn(c), torch.rand(c) + 0.5
    ref_rm, ref_rv = ours_rm.clone(), ours_rv.clone()
    assert_same_forward_backward(
        lambda x, w, b: batch_norm(x, ours_rm, ours_rv, w, b, training=True, momentum=0.3),
        lambda x, w, b: F.batch_norm(x, ref_rm, ref_rv, w, b, training=True, momentum=0.3), x, weight, bias)
    torch.testing.assert_close(ours_rm, ref_rm, **TOL)
    torch.testing.assert_close(ours_rv, ref_rv, **TOL)  # unbiased running variance, as torch


def test_batch_norm_running_var_is_unbiased_and_eval_uses_it():
    x = torch.tensor([[1.0], [2.0], [4.0]])  # one channel, m = 3: mean 7/3, unbiased var 7/3
    rm, rv = torch.zeros(1), torch.ones(1)
    batch_norm(x, rm, rv, training=True, momentum=1.0)
    torch.testing.assert_close(rm, torch.tensor([7 / 3]))
    torch.testing.assert_close(rv, torch.tensor([x.var(unbiased=True).item()]))
    out = batch_norm(x, rm, rv, training=False)
    torch.testing.assert_close(out, (x - 7 / 3) / torch.sqrt(torch.tensor(7 / 3) + 1e-5))


@pytest.mark.parametrize("momentum,affine,track", [(0.1, True, True), (None, True, True), (0.5, False, False)])
def test_batch_norm_module_train_eval_cycle_matches_torch(momentum, affine, track):
    torch.manual_seed(1)
    ref = nn.BatchNorm2d(5, momentum=momentum, affine=affine, track_running_stats=track)
    ours = BatchNorm2d(5, momentum=momentum, affine=affine, track_running_stats=track)
    if affine:
        with torch.no_grad():
            ref.weight.normal_(), ref.bias.normal_()
    ours.load_state_dict(ref.state_dict())
    for step in range(4):
        x = torch.randn(6, 5, 4, 4) * (step + 1) + step
        torch.testing.assert_close(ours(x), ref(x), **TOL)
    assert set(ours.state_dict()) == set(ref.state_dict())
    for key, value in ref.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[key], value, **TOL)
    ours.eval(), ref.eval()
    x = torch.randn(3, 5, 4, 4)
    torch.testing.assert_close(ours(x), ref(x), **TOL)


@pytest.mark.parametrize("normalized_shape", [(6,), (5, 6), (4, 5, 6)])
def test_layer_norm_matches_torch(normalized_shape):
    torch.manual_seed(2)
    x = torch.randn(3, 4, 5, 6) * 2 - 1
    weight, bias = torch.randn(normalized_shape), torch.randn(normalized_shape)
    assert_same_forward_backward(lambda x, w, b: layer_norm(x, normalized_shape, w, b),
                                 lambda x, w, b: F.layer_norm(x, normalized_shape, w, b), x, weight, bias)
    ref = nn.LayerNorm(normalized_shape)
    ours = LayerNorm(normalized_shape)
    ours.load_state_dict(ref.state_dict())
    torch.testing.assert_close(ours(x), ref(x), **TOL)


@pytest.mark.parametrize("shape", [(2, 3, 5, 6), (2, 3, 9)])
def test_instance_norm_matches_torch(shape):
    torch.manual_seed(3)
    x = torch.randn(*shape) * 3
    weight, bias = torch.randn(shape[1]), torch.randn(shape[1])
    assert_same_forward_backward(lambda x, w, b: instance_norm(x, w, b),
                                 lambda x, w, b: F.instance_norm(x, weight=w, bias=b), x, weight, bias)
    torch.testing.assert_close(InstanceNorm2d(3)(x), nn.InstanceNorm2d(3)(x) if len(shape) == 4 else F.instance_norm(x),
                               **TOL)


@pytest.mark.parametrize("num_groups", [1, 2, 3, 6])
def test_group_norm_matches_torch(num_groups):
    torch.manual_seed(4)
    x = torch.randn(2, 6, 5, 4) * 2 + 0.5
    weight, bias = torch.randn(6), torch.randn(6)
    assert_same_forward_backward(lambda x, w, b: group_norm(x, num_groups, w, b),
                                 lambda x, w, b: F.group_norm(x, num_groups, w, b), x, weight, bias)
    ref, ours = nn.GroupNorm(num_groups, 6), GroupNorm(num_groups, 6)
    ours.load_state_dict(ref.state_dict())
    torch.testing.assert_close(ours(x), ref(x), **TOL)


def test_group_norm_extremes_are_layer_and_instance_norm():
    """Wu & He 2018, fig. 2: G = 1 is layer norm over (C, H, W); G = C is instance norm."""
    x = torch.randn(2, 6, 5, 4)
    torch.testing.assert_close(group_norm(x, 1), F.layer_norm(x, (6, 5, 4)), **TOL)
    torch.testing.assert_close(group_norm(x, 6), F.instance_norm(x), **TOL)


@pytest.mark.parametrize("size,alpha,beta,k", [(5, 1e-4, 0.75, 2.0), (3, 0.5, 0.75, 1.0), (4, 1.0, 0.5, 1.5), (1, 0.1, 1.0, 1.0)])
def test_lrn_matches_torch(size, alpha, beta, k):
    torch.manual_seed(5)
    x = torch.randn(2, 7, 4, 5) * 3
    assert_same_forward_backward(lambda x: local_response_norm(x, size, alpha, beta, k),
                                 lambda x: F.local_response_norm(x, size, alpha, beta, k), x)
    torch.testing.assert_close(LocalResponseNorm(size, alpha=alpha, beta=beta, k=k)(x),
                               nn.LocalResponseNorm(size, alpha, beta, k)(x), **TOL)


def test_lrn_alexnet_form_is_the_papers_formula():
    """AlexNet section 3.3: b_i = a_i / (k + α Σ_{j=max(0,i-n/2)}^{min(N-1,i+n/2)} a_j²)^β, k=2, n=5, α=1e-4, β=0.75."""
    torch.manual_seed(6)
    x = torch.randn(2, 9, 3, 3, dtype=torch.float64) * 20
    ref = torch.empty_like(x)
    for i in range(9):
        lo, hi = max(0, i - 2), min(8, i + 2)
        ref[:, i] = x[:, i] / (2.0 + 1e-4 * x[:, lo:hi + 1].square().sum(dim=1)) ** 0.75
    torch.testing.assert_close(LocalResponseNorm.alexnet()(x), ref)
    gl = LocalResponseNorm.googlenet()
    torch.testing.assert_close(gl(x), nn.LocalResponseNorm(5, 1e-4, 0.75, 1.0)(x))


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="more than one value per channel"):
        batch_norm(torch.randn(1, 3), torch.zeros(3), torch.ones(3), training=True)
    with pytest.raises(ValueError, match="expected \\(N, 4"):
        BatchNorm2d(4)(torch.randn(2, 3, 4, 4))
    with pytest.raises(ValueError, match="normalized_shape"):
        layer_norm(torch.randn(2, 3, 4), (3,))
    with pytest.raises(ValueError, match="num_groups"):
        GroupNorm(4, 6)
    with pytest.raises(ValueError, match="dividing 6 channels"):
        group_norm(torch.randn(2, 6, 3, 3), 4)
    with pytest.raises(ValueError, match="running_mean"):
        batch_norm(torch.randn(4, 3), None, None, training=False)
