"""ViT against torchvision's layout and counts, and against torch.nn.TransformerEncoderLayer.

References (independent of canon's code):
    - parameter counts quoted by torchvision's model docs (vit_b_16 86,567,656; vit_b_32 88,224,232;
      vit_l_16 304,326,632);
    - the ``state_dict`` layout written out from torchvision/models/vision_transformer.py;
    - logits from a model assembled in the test out of F.conv2d and a stack of
      ``torch.nn.TransformerEncoderLayer(norm_first=True, activation="gelu")`` holding the same weights;
    - position-embedding interpolation: against Keys' cubic convolution (a = -0.75, the kernel of
      torch's and torchvision's bicubic mode) written out in numpy, with torchvision's
      align_corners=True and with align_corners=False; corners and the [class] row kept.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import canon
from canon.models.classification.vit import VisionTransformer, resize_pos_embed

BIG = {"vit_b_16": (16, 12, 768, 3072, 86_567_656), "vit_b_32": (32, 12, 768, 3072, 88_224_232),
       "vit_l_16": (16, 24, 1024, 4096, 304_326_632)}


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def torchvision_vit_layout(patch, layers, dim, mlp, image=224, in_chans=3, num_classes=1000):
    """(key, shape) list in torchvision's order (VisionTransformer: class_token, conv_proj, encoder, heads)."""
    seq = (image // patch) ** 2 + 1
    keys = [("class_token", (1, 1, dim)), ("conv_proj.weight", (dim, in_chans, patch, patch)), ("conv_proj.bias", (dim,)),
            ("encoder.pos_embedding", (1, seq, dim))]
    for i in range(layers):
        p = f"encoder.layers.encoder_layer_{i}"
        keys += [(f"{p}.ln_1.weight", (dim,)), (f"{p}.ln_1.bias", (dim,)),
                 (f"{p}.self_attention.in_proj_weight", (3 * dim, dim)), (f"{p}.self_attention.in_proj_bias", (3 * dim,)),
                 (f"{p}.self_attention.out_proj.weight", (dim, dim)), (f"{p}.self_attention.out_proj.bias", (dim,)),
                 (f"{p}.ln_2.weight", (dim,)), (f"{p}.ln_2.bias", (dim,)),
                 (f"{p}.mlp.0.weight", (mlp, dim)), (f"{p}.mlp.0.bias", (mlp,)),
                 (f"{p}.mlp.3.weight", (dim, mlp)), (f"{p}.mlp.3.bias", (dim,))]
    keys += [("encoder.ln.weight", (dim,)), ("encoder.ln.bias", (dim,))]
    return keys + [("heads.head.weight", (num_classes, dim)), ("heads.head.bias", (num_classes,))]


@pytest.mark.parametrize("name", list(BIG))
def test_layout_and_parameter_count_equal_torchvision(name):
    patch, layers, dim, mlp, expected = BIG[name]
    with torch.device("meta"):  # no memory, no init cost: shapes only
        model = canon.create_model(name)
    assert count_params(model) == expected
    got = sorted((k, tuple(v.shape)) for k, v in model.state_dict().items())
    assert got == sorted(torchvision_vit_layout(patch, layers, dim, mlp))


def test_tiny_vit_layout():
    model = canon.create_model("vit_tiny_patch4_28")
    got = sorted((k, tuple(v.shape)) for k, v in model.state_dict().items())
    assert got == sorted(torchvision_vit_layout(4, 6, 128, 512, image=28, in_chans=1, num_classes=10))


def reference_vit(model: VisionTransformer, num_heads: int) -> nn.Module:
    """The same network from torch built-ins, weights copied by name."""
    sd = model.state_dict()
    dim, mlp = sd["class_token"].shape[-1], sd["encoder.layers.encoder_layer_0.mlp.0.weight"].shape[0]
    layers = nn.ModuleList()
    for i in range(len(model.encoder.layers)):
        layer = nn.TransformerEncoderLayer(dim, num_heads, dim_feedforward=mlp, dropout=0.0, activation="gelu",
                                           layer_norm_eps=1e-6, batch_first=True, norm_first=True)
        p = f"encoder.layers.encoder_layer_{i}."
        rename = {"self_attn.in_proj_weight": "self_attention.in_proj_weight",
                  "self_attn.in_proj_bias": "self_attention.in_proj_bias",
                  "self_attn.out_proj.weight": "self_attention.out_proj.weight",
                  "self_attn.out_proj.bias": "self_attention.out_proj.bias",
                  "linear1.weight": "mlp.0.weight", "linear1.bias": "mlp.0.bias",
                  "linear2.weight": "mlp.3.weight", "linear2.bias": "mlp.3.bias",
                  "norm1.weight": "ln_1.weight", "norm1.bias": "ln_1.bias",
                  "norm2.weight": "ln_2.weight", "norm2.bias": "ln_2.bias"}
        layer.load_state_dict({k: sd[p + v] for k, v in rename.items()})
        layers.append(layer)
    return layers.eval()


def reference_forward(model: VisionTransformer, layers: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
    sd = model.state_dict()
    patch = sd["conv_proj.weight"].shape[-1]
    tokens = F.conv2d(x, sd["conv_proj.weight"], sd["conv_proj.bias"], stride=patch).flatten(2).transpose(1, 2)
    tokens = torch.cat([sd["class_token"].expand(x.shape[0], -1, -1), tokens], dim=1) + sd["encoder.pos_embedding"]
    for layer in layers:
        tokens = layer(tokens)
    cls = F.layer_norm(tokens[:, 0], tokens.shape[-1:], sd["encoder.ln.weight"], sd["encoder.ln.bias"], eps=1e-6)
    return F.linear(cls, sd["heads.head.weight"], sd["heads.head.bias"])


def test_logits_equal_transformer_encoder_layer_stack():
    torch.manual_seed(0)
    model = canon.create_model("vit_tiny_patch4_28").eval()
    nn.init.normal_(model.heads.head.weight, std=0.1)  # the zero-initialised head would hide differences
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        ours = model(x)
        ref = reference_forward(model, reference_vit(model, num_heads=4), x)
    assert ours.abs().max() > 1e-2
    assert (ours - ref).abs().max() <= 1e-4


def test_vit_b_16_logits_equal_reference():
    torch.manual_seed(0)
    # vit_b_16's blocks (D=768, 12 heads, MLP 3072), two of them, on 2×2 patches.
    model = VisionTransformer(image_size=32, patch_size=16, num_layers=2, num_classes=10).eval()
    nn.init.normal_(model.heads.head.weight, std=0.1)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (model(x) - reference_forward(model, reference_vit(model, 12), x)).abs().max() <= 1e-4


# ----------------------------------------------------------------------------- position-embedding interpolation
def test_resize_pos_embed_keeps_prefix_and_corners():
    torch.manual_seed(0)
    pos = torch.randn(1, 1 + 7 * 7, 16)
    out = resize_pos_embed(pos, (14, 14))
    assert out.shape == (1, 1 + 14 * 14, 16)
    assert torch.equal(out[:, 0], pos[:, 0])
    old, new = pos[0, 1:].reshape(7, 7, 16), out[0, 1:].reshape(14, 14, 16)
    for (i, j), (k, m) in zip([(0, 0), (0, 6), (6, 0), (6, 6)], [(0, 0), (0, 13), (13, 0), (13, 13)]):
        assert torch.allclose(new[k, m], old[i, j], atol=1e-6)
    assert resize_pos_embed(pos, 7) is pos


def cubic_weights(in_size: int, out_size: int, align_corners: bool, a: float = -0.75) -> np.ndarray:
    """(out, in) matrix of 1-D cubic-convolution interpolation, border samples repeated (Keys 1981)."""
    def kernel(x):
        x = abs(x)
        if x <= 1:
            return (a + 2) * x ** 3 - (a + 3) * x ** 2 + 1
        return a * x ** 3 - 5 * a * x ** 2 + 8 * a * x - 4 * a if x < 2 else 0.0

    weights = np.zeros((out_size, in_size))
    for i in range(out_size):
        if align_corners:
            src = i * (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
        else:
            src = (i + 0.5) * in_size / out_size - 0.5
        base = int(np.floor(src))
        for j in range(base - 1, base + 3):
            weights[i, min(max(j, 0), in_size - 1)] += kernel(src - j)
    return weights


@pytest.mark.parametrize("old, new, align_corners", [((7, 7), (14, 10), True), ((7, 7), (5, 4), True),
                                                     ((6, 6), (9, 12), False)])
def test_resize_pos_embed_equals_cubic_convolution(old, new, align_corners):
    torch.manual_seed(0)
    pos = torch.randn(1, 1 + old[0] * old[1], 8, dtype=torch.float64)
    out = resize_pos_embed(pos, new, align_corners=align_corners)
    grid = pos[0, 1:].reshape(old[0], old[1], 8).numpy()
    wy, wx = cubic_weights(old[0], new[0], align_corners), cubic_weights(old[1], new[1], align_corners)
    expected = np.einsum("ij,jkc,lk->ilc", wy, grid, wx).reshape(new[0] * new[1], 8)
    np.testing.assert_allclose(out[0, 1:].numpy(), expected, atol=1e-8)
    assert torch.equal(out[:, :1], pos[:, :1])


def test_resize_pos_embed_is_exact_on_a_constant_field():
    """Bicubic interpolation reproduces constants exactly (its weights sum to one)."""
    pos = torch.cat([torch.zeros(1, 1, 4), torch.full((1, 25, 4), 3.0)], dim=1)
    out = resize_pos_embed(pos, (9, 3))
    assert torch.allclose(out[0, 1:], torch.full((27, 4), 3.0), atol=1e-6)


def test_forward_at_another_size_equals_model_built_for_it():
    torch.manual_seed(0)
    model = canon.create_model("vit_tiny_patch4_28").eval()
    nn.init.normal_(model.heads.head.weight, std=0.1)
    big = canon.create_model("vit_tiny_patch4_28", image_size=40).eval()
    sd = model.state_dict()
    sd["encoder.pos_embedding"] = resize_pos_embed(sd["encoder.pos_embedding"], (10, 10))
    big.load_state_dict(sd)
    x = torch.randn(2, 1, 40, 40)
    with torch.no_grad():
        assert torch.allclose(model(x), big(x), atol=1e-5)
    with pytest.raises(ValueError, match="divisible by 4"):
        model(torch.randn(1, 1, 30, 30))


# ----------------------------------------------------------------------------- shared model contract
def test_tiny_vit_shape_backward_and_options():
    model = canon.create_model("vit_tiny_patch4_28")
    assert count_params(model) == 1_199_882
    out = model(torch.randn(2, 1, 28, 28))
    assert out.shape == (2, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    assert canon.create_model("vit_tiny_patch4_28", in_chans=3, num_classes=4)(torch.randn(1, 3, 28, 28)).shape == (1, 4)


@pytest.mark.parametrize("name", list(BIG))
def test_big_models_small_input_shape(name):
    patch = BIG[name][0]
    with torch.device("meta"):  # shapes only: building vit_l_16 for real takes seconds
        model = canon.create_model(name, num_classes=3, in_chans=1).eval()
        assert model(torch.randn(2, 1, 224, 224)).shape == (2, 3)
        assert model(torch.randn(2, 1, 2 * patch, 2 * patch)).shape == (2, 3)  # interpolated position embeddings


def test_input_validation():
    model = canon.create_model("vit_tiny_patch4_28").eval()
    with pytest.raises(ValueError, match="input channel"):
        model(torch.randn(1, 3, 28, 28))
    with pytest.raises(ValueError, match="too small"):
        model(torch.randn(1, 1, 2, 2))
    with pytest.raises(ValueError, match="divisible by patch_size"):
        VisionTransformer(image_size=30, patch_size=4)
    with pytest.raises(TypeError, match="unknown argument"):
        canon.create_model("vit_b_16", img_size=32)


def test_reset_classifier():
    model = canon.create_model("vit_tiny_patch4_28").eval()
    model.reset_classifier(0)
    assert model(torch.randn(1, 1, 28, 28)).shape == (1, 128)
    model.reset_classifier(5)
    assert model(torch.randn(1, 1, 28, 28)).shape == (1, 5)
