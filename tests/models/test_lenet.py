"""LeNet-5: the paper's per-layer parameter counts and Table I, and both forms' behaviour.

References: the parameter counts printed in Section II-B of LeCun et al. 1998, Table I written
out here as the paper's grid of X marks, torch's own conv/pool functions for the modern form.
"""
import pytest
import torch
import torch.nn.functional as F

import canon

# Section II-B: trainable parameters per layer.
PAPER_COUNTS = {"c1": 156, "s2": 12, "c3": 1516, "s4": 32, "c5": 48120, "f6": 10164}

# Table I as printed in the paper: row = S2 map 0..5, column = C3 map 0..15, X = connected.
TABLE_I_ROWS = [
    "X...XXX..XXXX.XX",
    "XX...XXX..XXXX.X",
    "XXX...XXX..X.XXX",
    ".XXX..XXXX..X.XX",
    "..XXX..XXXX.XX.X",
    "...XXX..XXXX.XXX",
]


def _table_i():
    """For each C3 map, the S2 maps the printed table connects it to."""
    return [tuple(i for i in range(6) if TABLE_I_ROWS[i][o] == "X") for o in range(16)]


def test_paper_form_has_the_papers_parameter_counts():
    model = canon.create_model("lenet5_paper")
    for name, expected in PAPER_COUNTS.items():
        got = sum(p.numel() for p in getattr(model, name).parameters())
        assert got == expected, (name, got, expected)
    assert sum(p.numel() for p in model.parameters()) == sum(PAPER_COUNTS.values())  # RBF centres are fixed


def test_c3_connections_follow_table_one():
    from canon.models.classification.lenet import C3_CONNECTIONS
    table = _table_i()
    assert [tuple(sorted(c)) for c in C3_CONNECTIONS] == table
    assert len(table) == 16 and sum(len(c) for c in table) == 60
    # the paper's grouping: 6 maps x 3 contiguous, 6 x 4 contiguous, 3 x 4 discontinuous, 1 x all
    assert [len(c) for c in table] == [3] * 6 + [4] * 9 + [6]
    model = canon.create_model("lenet5_paper")
    w = model.c3.full_weight()
    connected = [tuple(int(i) for i in torch.nonzero(w[o].abs().sum((1, 2))).flatten()) for o in range(16)]
    assert connected == table
    # a C3 map ignores an S2 map it is not connected to
    x = torch.randn(1, 6, 14, 14)
    y = model.c3(x)
    x2 = x.clone()
    x2[:, 3] += 5.0  # row 3 of Table I: map 3 does not feed C3 maps 0, 4, 5, 10, 11, 13
    unaffected = [o for o in range(16) if TABLE_I_ROWS[3][o] == "."]
    assert unaffected == [0, 4, 5, 10, 11, 13]
    assert torch.allclose(model.c3(x2)[:, unaffected], y[:, unaffected])


def test_paper_blocks_against_their_formulas():
    model = canon.create_model("lenet5_paper")
    a = torch.linspace(-3, 3, 13)
    assert torch.allclose(model.act(a), 1.7159 * torch.tanh(2 * a / 3))
    assert torch.allclose(model.act(torch.tensor([1.0, -1.0])), torch.tensor([1.0, -1.0]), atol=1e-4)
    with torch.no_grad():
        model.s2.weight.copy_(torch.arange(1.0, 7.0))
        model.s2.bias.copy_(torch.full((6,), 0.5))
    x = torch.randn(2, 6, 28, 28)
    windows = x.unfold(2, 2, 2).unfold(3, 2, 2).sum((-1, -2))  # (2, 6, 14, 14)
    assert torch.allclose(model.s2(x), windows * torch.arange(1.0, 7.0).view(1, 6, 1, 1) + 0.5, atol=1e-5)
    # RBF output: logits are minus the squared distance to each class centre
    f = torch.randn(3, 84)
    expected = -torch.cdist(f, model.output.centres).pow(2)
    assert torch.allclose(model.output(f), expected, atol=1e-3)


def test_modern_form_equals_a_functional_transcription():
    model = canon.create_model("lenet5").eval()
    assert sum(p.numel() for p in model.parameters()) == 61_706
    sd = model.state_dict()
    x = torch.randn(4, 1, 32, 32)
    h = F.max_pool2d(F.relu(F.conv2d(x, sd["features.0.weight"], sd["features.0.bias"])), 2)
    h = F.max_pool2d(F.relu(F.conv2d(h, sd["features.3.weight"], sd["features.3.bias"])), 2)
    h = F.relu(F.conv2d(h, sd["features.6.weight"], sd["features.6.bias"])).flatten(1)
    h = F.relu(F.linear(h, sd["f6.0.weight"], sd["f6.0.bias"]))
    expected = F.linear(h, sd["classifier.weight"], sd["classifier.bias"])
    assert torch.allclose(model(x), expected, atol=1e-5)


@pytest.mark.parametrize("name", ["lenet5", "lenet5_paper"])
def test_shapes_options_and_input_errors(name):
    model = canon.create_model(name, num_classes=7, in_chans=3)
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 7)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    with pytest.raises(ValueError, match=r"3 input channel"):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match="32"):
        model(torch.randn(1, 3, 28, 28))
    model.reset_classifier(4)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 4)
    assert canon.model_info(name).input_size == (1, 32, 32)


@pytest.mark.parametrize("name", ["lenet5", "lenet5_paper"])
def test_constructor_arguments_are_validated(name):
    with pytest.raises(ValueError, match="num_classes"):
        canon.create_model(name, num_classes=-1)
    with pytest.raises(ValueError, match="in_chans"):
        canon.create_model(name, in_chans=0)
    with pytest.raises(TypeError, match="unknown argument"):
        canon.create_model(name, drop_rate=0.1)


def test_modern_form_headless_gives_f6_features():
    model = canon.create_model("lenet5", num_classes=0).eval()
    x = torch.randn(2, 1, 32, 32)
    sd = model.state_dict()
    h = F.max_pool2d(F.relu(F.conv2d(x, sd["features.0.weight"], sd["features.0.bias"])), 2)
    h = F.max_pool2d(F.relu(F.conv2d(h, sd["features.3.weight"], sd["features.3.bias"])), 2)
    h = F.relu(F.conv2d(h, sd["features.6.weight"], sd["features.6.bias"])).flatten(1)
    expected = F.relu(F.linear(h, sd["f6.0.weight"], sd["f6.0.bias"]))  # (2, 84)
    assert torch.allclose(model(x), expected, atol=1e-5)
    with pytest.raises(ValueError, match="lenet5 expects a 32x32 input"):
        model(torch.randn(1, 1, 36, 36))
