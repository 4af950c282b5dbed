"""DeiT against timm's layout and counts, torch's Transformer layers, and the paper's loss.

References (independent of canon's code):
    - parameter counts of timm's models of the same names (e.g. deit_base_distilled_patch16_224
      87,338,192) and the ``state_dict`` layout written out from timm/models/vision_transformer.py
      and timm/models/deit.py;
    - logits from F.conv2d + ``torch.nn.TransformerEncoderLayer(norm_first=True)`` with the same weights,
      the distilled output being the mean of the two heads (section 4 of arXiv:2012.12877);
    - the hard-distillation loss written out from eq. 3 with log-softmax;
    - timm's position-embedding resampling (bicubic, antialiased, align_corners=False) against an
      antialiased cubic filter (a = -0.5, support widened when shrinking, PIL-style) in numpy.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import canon
from canon.models.classification.deit import DeiT, hard_distillation_loss, soft_distillation_loss
from canon.models.classification.vit import resize_pos_embed

# name: (embed_dim, depth, distilled, timm's parameter count)
TIMM = {
    "deit_tiny_patch16_224": (192, 12, False, 5_717_416),
    "deit_small_patch16_224": (384, 12, False, 22_050_664),
    "deit_base_patch16_224": (768, 12, False, 86_567_656),
    "deit_tiny_distilled_patch16_224": (192, 12, True, 5_910_800),
    "deit_small_distilled_patch16_224": (384, 12, True, 22_436_432),
    "deit_base_distilled_patch16_224": (768, 12, True, 87_338_192),
}
MINI = ["deit_tiny_patch4_28", "deit_tiny_distilled_patch4_28"]


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def timm_layout(dim, depth, distilled, patch=16, image=224, in_chans=3, num_classes=1000, mlp_ratio=4):
    """(key, shape) set of timm's VisionTransformer / VisionTransformerDistilled."""
    tokens = (image // patch) ** 2 + (2 if distilled else 1)
    hidden = dim * mlp_ratio
    keys = [("cls_token", (1, 1, dim)), ("pos_embed", (1, tokens, dim)),
            ("patch_embed.proj.weight", (dim, in_chans, patch, patch)), ("patch_embed.proj.bias", (dim,)),
            ("norm.weight", (dim,)), ("norm.bias", (dim,)),
            ("head.weight", (num_classes, dim)), ("head.bias", (num_classes,))]
    if distilled:
        keys += [("dist_token", (1, 1, dim)), ("head_dist.weight", (num_classes, dim)), ("head_dist.bias", (num_classes,))]
    for i in range(depth):
        p = f"blocks.{i}"
        keys += [(f"{p}.norm1.weight", (dim,)), (f"{p}.norm1.bias", (dim,)),
                 (f"{p}.attn.qkv.weight", (3 * dim, dim)), (f"{p}.attn.qkv.bias", (3 * dim,)),
                 (f"{p}.attn.proj.weight", (dim, dim)), (f"{p}.attn.proj.bias", (dim,)),
                 (f"{p}.norm2.weight", (dim,)), (f"{p}.norm2.bias", (dim,)),
                 (f"{p}.mlp.fc1.weight", (hidden, dim)), (f"{p}.mlp.fc1.bias", (hidden,)),
                 (f"{p}.mlp.fc2.weight", (dim, hidden)), (f"{p}.mlp.fc2.bias", (dim,))]
    return sorted(keys)


@pytest.mark.parametrize("name", list(TIMM))
def test_layout_and_parameter_count_equal_timm(name):
    dim, depth, distilled, expected = TIMM[name]
    with torch.device("meta"):
        model = canon.create_model(name)
    assert count_params(model) == expected
    assert sorted((k, tuple(v.shape)) for k, v in model.state_dict().items()) == timm_layout(dim, depth, distilled)
    with torch.device("meta"):
        assert model.eval()(torch.randn(2, 3, 224, 224)).shape == (2, 1000)


@pytest.mark.parametrize("name", MINI)
def test_mini_layout(name):
    model = canon.create_model(name)
    expected = timm_layout(128, 6, "distilled" in name, patch=4, image=28, in_chans=1, num_classes=10)
    assert sorted((k, tuple(v.shape)) for k, v in model.state_dict().items()) == expected


def reference_forward(model: DeiT, x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """The same network from torch built-ins: F.conv2d, TransformerEncoderLayer stack, LayerNorm, heads."""
    sd = model.state_dict()
    dim = sd["cls_token"].shape[-1]
    patch = sd["patch_embed.proj.weight"].shape[-1]
    x = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=patch).flatten(2).transpose(1, 2)
    prefix = [sd["cls_token"]] + ([sd["dist_token"]] if "dist_token" in sd else [])
    x = torch.cat([p.expand(x.shape[0], -1, -1) for p in prefix] + [x], dim=1) + sd["pos_embed"]
    for i in range(len(model.blocks)):
        p = f"blocks.{i}."
        layer = nn.TransformerEncoderLayer(dim, num_heads, dim_feedforward=sd[p + "mlp.fc1.weight"].shape[0],
                                           dropout=0.0, activation="gelu", layer_norm_eps=1e-6, batch_first=True,
                                           norm_first=True).eval()
        rename = {"self_attn.in_proj_weight": "attn.qkv.weight", "self_attn.in_proj_bias": "attn.qkv.bias",
                  "self_attn.out_proj.weight": "attn.proj.weight", "self_attn.out_proj.bias": "attn.proj.bias",
                  "linear1.weight": "mlp.fc1.weight", "linear1.bias": "mlp.fc1.bias",
                  "linear2.weight": "mlp.fc2.weight", "linear2.bias": "mlp.fc2.bias",
                  "norm1.weight": "norm1.weight", "norm1.bias": "norm1.bias",
                  "norm2.weight": "norm2.weight", "norm2.bias": "norm2.bias"}
        layer.load_state_dict({k: sd[p + v] for k, v in rename.items()})
        x = layer(x)
    x = F.layer_norm(x, (dim,), sd["norm.weight"], sd["norm.bias"], eps=1e-6)
    logits = F.linear(x[:, 0], sd["head.weight"], sd["head.bias"])
    if "dist_token" in sd:
        return logits, F.linear(x[:, 1], sd["head_dist.weight"], sd["head_dist.bias"])
    return logits, None


@pytest.mark.parametrize("name", MINI)
def test_logits_equal_transformer_encoder_layer_stack(name):
    torch.manual_seed(0)
    model = canon.create_model(name).eval()
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        ours = model(x)
        cls, dist = reference_forward(model, x, num_heads=4)
    expected = cls if dist is None else (cls + dist) / 2
    assert (ours - expected).abs().max() <= 1e-4


def test_distilled_training_returns_both_heads():
    torch.manual_seed(0)
    model = canon.create_model("deit_tiny_distilled_patch4_28", distilled_training=True)
    x = torch.randn(2, 1, 28, 28)
    out = model.train()(x)
    assert set(out) == {"logits", "dist_logits"} and out["logits"].shape == (2, 10)
    with torch.no_grad():
        cls, dist = reference_forward(model, x, num_heads=4)
    assert torch.allclose(out["logits"], cls, atol=1e-4) and torch.allclose(out["dist_logits"], dist, atol=1e-4)
    assert not torch.allclose(cls, dist)  # two different heads on two different tokens
    eval_out = model.eval()(x)
    assert torch.allclose(eval_out, (cls + dist) / 2, atol=1e-4)
    # Default (distilled_training=False): the average also in training mode.
    plain = canon.create_model("deit_tiny_distilled_patch4_28").train()
    assert isinstance(plain(x), torch.Tensor)


def test_hard_distillation_loss_equals_eq3():
    torch.manual_seed(0)
    logits, dist_logits, teacher = torch.randn(3, 5, 10).unbind(0)
    labels = torch.randint(0, 10, (5,))
    teacher_labels = teacher.argmax(dim=1)
    ce_cls = -logits.log_softmax(1)[torch.arange(5), labels].mean()
    ce_dist = -dist_logits.log_softmax(1)[torch.arange(5), teacher_labels].mean()
    got = hard_distillation_loss({"logits": logits, "dist_logits": dist_logits}, labels, teacher)
    assert torch.allclose(got, 0.5 * ce_cls + 0.5 * ce_dist, atol=1e-6)
    # One head (a plain student): both terms read the same logits.
    ce_single = -logits.log_softmax(1)[torch.arange(5), teacher_labels].mean()
    assert torch.allclose(hard_distillation_loss(logits, labels, teacher), 0.5 * ce_cls + 0.5 * ce_single, atol=1e-6)
    with pytest.raises(TypeError, match="dist_logits"):
        hard_distillation_loss({"logits": logits}, labels, teacher)
    with pytest.raises(ValueError, match="teacher_logits"):
        hard_distillation_loss({"logits": logits, "dist_logits": dist_logits}, labels, teacher[:, :3])


def test_soft_distillation_loss_equals_eq2():
    """(1−λ)·CE(Z_s, y) + λ·τ²·KL(ψ(Z_t/τ) ‖ ψ(Z_d/τ)), the KL written out as Σ p_t (log p_t − log p_d)."""
    torch.manual_seed(0)
    logits, dist_logits, teacher = (torch.randn(3, 6, 10, dtype=torch.float64) * 3).unbind(0)
    labels = torch.randint(0, 10, (6,))
    tau, lam = 3.0, 0.1
    ce = -logits.log_softmax(1)[torch.arange(6), labels].mean()
    p_t = torch.exp(teacher / tau) / torch.exp(teacher / tau).sum(1, keepdim=True)
    p_d = torch.exp(dist_logits / tau) / torch.exp(dist_logits / tau).sum(1, keepdim=True)
    kl = (p_t * (p_t.log() - p_d.log())).sum(1).mean()
    got = soft_distillation_loss({"logits": logits, "dist_logits": dist_logits}, labels, teacher, tau=tau, alpha=lam)
    torch.testing.assert_close(got, (1 - lam) * ce + lam * tau ** 2 * kl)
    # One head (a plain student): both terms read the same logits.
    single = soft_distillation_loss(logits, labels, teacher, tau=1.0, alpha=0.5)
    p_s = logits.softmax(1)
    expected = 0.5 * ce + 0.5 * (teacher.softmax(1) * (teacher.log_softmax(1) - p_s.log())).sum(1).mean()
    torch.testing.assert_close(single, expected)
    # A student that matches the teacher has no distillation term left.
    torch.testing.assert_close(soft_distillation_loss(teacher, labels, teacher, alpha=1.0),
                               torch.zeros((), dtype=torch.float64))
    with pytest.raises(ValueError, match="tau must be > 0"):
        soft_distillation_loss(logits, labels, teacher, tau=0.0)
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
        soft_distillation_loss(logits, labels, teacher, alpha=1.5)


def test_soft_distillation_term_is_float32_for_bfloat16_logits():
    """Under --amp the logits arrive in bfloat16; the KL must be computed from them in float32 (bfloat16
    log-softmax keeps 3 significant digits, so near-equal distributions would give a KL of rounding noise)."""
    from canon.models.classification.deit import distillation_term

    torch.manual_seed(0)
    student, teacher = (torch.randn(2, 64, 10) * 4).to(torch.bfloat16).unbind(0)
    s64, t64 = student.double() / 3, teacher.double() / 3  # the same bfloat16 values, in float64
    p_t = t64.softmax(1)
    expected = 9 * (p_t * (p_t.log() - s64.log_softmax(1))).sum(1).mean()
    got = distillation_term(student, teacher, "soft", tau=3.0)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", MINI)
def test_mini_shape_backward_and_options(name):
    model = canon.create_model(name, in_chans=3, num_classes=4)
    out = model(torch.randn(2, 3, 28, 28))
    assert out.shape == (2, 4)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_distilled_training_gradients_reach_both_heads():
    model = canon.create_model("deit_tiny_distilled_patch4_28", distilled_training=True, drop_path_rate=0.1)
    out = model(torch.randn(4, 1, 28, 28))
    hard_distillation_loss(out, torch.randint(0, 10, (4,)), torch.randn(4, 10)).backward()
    assert model.head.weight.grad.abs().sum() > 0 and model.head_dist.weight.grad.abs().sum() > 0


def test_input_validation_and_options():
    model = canon.create_model("deit_tiny_patch4_28").eval()
    with pytest.raises(ValueError, match="input channel"):
        model(torch.randn(1, 3, 28, 28))
    with pytest.raises(ValueError, match="too small"):
        model(torch.randn(1, 1, 2, 2))
    with pytest.raises(ValueError, match="divisible by 4"):
        model(torch.randn(1, 1, 30, 30))
    with pytest.raises(ValueError, match="distilled=True"):
        canon.create_model("deit_tiny_patch4_28", distilled_training=True)
    with pytest.raises(TypeError, match="unknown argument"):
        canon.create_model("deit_tiny_patch4_28", image_size=32)
    assert model(torch.randn(1, 1, 32, 32)).shape == (1, 10)  # interpolated position embeddings


def test_reset_classifier():
    model = canon.create_model("deit_tiny_distilled_patch4_28").eval()
    model.reset_classifier(3)
    assert model(torch.randn(1, 1, 28, 28)).shape == (1, 3)
    assert model.head_dist.out_features == 3


def antialiased_cubic_weights(in_size: int, out_size: int, a: float = -0.5) -> np.ndarray:
    """(out, in) resampling matrix: cubic kernel stretched by the shrink factor, taps inside the
    image only, each row normalised to sum 1 (the antialiased filter of PIL and torch)."""
    def kernel(x):
        x = abs(x)
        if x <= 1:
            return (a + 2) * x ** 3 - (a + 3) * x ** 2 + 1
        return a * x ** 3 - 5 * a * x ** 2 + 8 * a * x - 4 * a if x < 2 else 0.0

    scale = in_size / out_size
    stretch = max(scale, 1.0)
    weights = np.array([[kernel((j + 0.5 - (i + 0.5) * scale) / stretch) for j in range(in_size)]
                        for i in range(out_size)])
    return weights / weights.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("old, new", [((7, 7), (9, 9)), ((7, 7), (5, 4)), ((6, 6), (13, 8))])
def test_timm_resampling_equals_antialiased_cubic(old, new):
    torch.manual_seed(0)
    pos = torch.randn(1, 2 + old[0] * old[1], 4, dtype=torch.float64)
    out = resize_pos_embed(pos, new, num_prefix_tokens=2, align_corners=False, antialias=True)
    grid = pos[0, 2:].reshape(*old, 4).numpy()
    wy, wx = antialiased_cubic_weights(old[0], new[0]), antialiased_cubic_weights(old[1], new[1])
    expected = np.einsum("ij,jkc,lk->ilc", wy, grid, wx).reshape(-1, 4)
    np.testing.assert_allclose(out[0, 2:].numpy(), expected, atol=1e-8)
    assert torch.equal(out[:, :2], pos[:, :2])  # [class] and [distillation] rows untouched


def test_forward_at_another_size_equals_model_built_for_it():
    torch.manual_seed(0)
    model = canon.create_model("deit_tiny_distilled_patch4_28").eval()
    big = canon.create_model("deit_tiny_distilled_patch4_28", img_size=36).eval()
    sd = model.state_dict()
    grid = sd["pos_embed"][0, 2:].reshape(7, 7, -1).double().numpy()
    w = antialiased_cubic_weights(7, 9)
    resampled = torch.from_numpy(np.einsum("ij,jkc,lk->ilc", w, grid, w).reshape(1, 81, -1)).float()
    sd["pos_embed"] = torch.cat([sd["pos_embed"][:, :2], resampled], dim=1)
    big.load_state_dict(sd)
    x = torch.randn(2, 1, 36, 36)
    with torch.no_grad():
        assert torch.allclose(model(x), big(x), atol=1e-5)
