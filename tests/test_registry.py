"""The registry: every model registered with metadata; misses and typos explained."""
import pytest
import torch

import canon
from canon.registry import TASKS


def test_every_model_has_metadata():
    names = canon.list_models()
    assert len(names) >= 20
    for name in names:
        info = canon.model_info(name)
        assert info.task in TASKS and info.paper
        if info.task in ("translation", "reading"):  # token inputs: the model builds its own example input
            assert info.input_size == () and callable(getattr(info.model_class, "example_inputs", None)), name
        else:  # images: (C, H, W)
            assert len(info.input_size) == 3, name


def test_unknown_name_lists_the_closest():
    with pytest.raises(KeyError, match="resnet18"):
        canon.create_model("resnt18")


def test_unknown_argument_lists_the_valid_ones():
    with pytest.raises(TypeError, match="num_classes"):
        canon.create_model("resnet18", num_clases=10)


def test_filters():
    assert "resnet50" in canon.list_models(pattern="resnet*")
    assert all(n.startswith("vgg") for n in canon.list_models(pattern="vgg*"))
    assert all(canon.model_info(n).task == "classification" for n in canon.list_models(task="classification"))
    with pytest.raises(ValueError, match="classification"):
        canon.list_models(task="clasification")


def test_create_model_records_how_to_rebuild():
    m = canon.create_model("lenet5", num_classes=7)
    assert m.canon_name == "lenet5" and m.canon_kwargs == {"num_classes": 7}
    assert m(torch.zeros(2, 1, 32, 32)).shape == (2, 7)
