"""`canon info`'s counts: multiply-adds of convolutions, linear layers, attention and pooling
against hand counts from the layer shapes, and a summary for every registered model.

Summaries run on the meta device: shapes and counts without allocating or computing, so the
whole registry (segmentation models at 513x513 included) is summarised in seconds.
"""
import pytest
import torch

import canon
from canon.engine.summary import count_parameters, summarize


# Detectors (data-dependent proposal counts) and token models (vocabulary checks) read their tensors'
# values, which the meta device does not have: they are summarised on the CPU, at a small size.
REAL_TENSORS = ("detection", "translation", "reading")


def _summary_on_meta(name, input_size=None, **kwargs):
    info = canon.model_info(name)
    shape = input_size or info.input_size
    device = "cpu" if info.task in REAL_TENSORS else "meta"
    if info.task == "detection":
        shape = (3, 128, 128)
        kwargs.update({k: v for k, v in (("min_size", 128), ("max_size", 128)) if k in info.valid_kwargs()})
    with torch.device(device):
        model = canon.create_model(name, **kwargs)
        return summarize(model, (1, *shape) if shape else None, name=name)


def test_vit_b_16_multiply_adds_equal_the_hand_count_with_attention():
    tokens, dim, heads, mlp, layers = 197, 768, 12, 3072, 12
    per_layer = (tokens * dim * 3 * dim              # Q, K, V projections
                 + 2 * heads * tokens * tokens * (dim // heads)  # Q K^T and (softmax) V
                 + tokens * dim * dim                # output projection
                 + 2 * tokens * dim * mlp)           # the two MLP layers
    patch_embedding = 196 * dim * (3 * 16 * 16)
    head = dim * 1000
    assert _summary_on_meta("vit_b_16").macs == layers * per_layer + patch_embedding + head == 17_563_828_224


def test_resnet18_pooling_is_counted_per_window_element():
    rows = {row.name: row for row in _summary_on_meta("resnet18").layers}
    assert rows["maxpool"].macs == 64 * 56 * 56 * 3 * 3  # 3x3 windows over the 56x56x64 output
    assert rows["avgpool"].macs == 512 * 7 * 7           # global average over 7x7
    assert rows["fc"].macs == 512 * 1000
    assert rows["conv1"].macs == 112 * 112 * 64 * 3 * 7 * 7


@pytest.mark.parametrize("name", canon.list_models())
def test_every_registered_model_has_a_summary(name):
    info = canon.model_info(name)
    summary = _summary_on_meta(name)
    with torch.device("cpu" if info.task in REAL_TENSORS else "meta"):
        assert summary.params == count_parameters(canon.create_model(name))
    assert summary.macs > 0
    if info.task == "classification":
        assert summary.output_shape == (1, info.num_classes)
    elif info.task == "segmentation":  # dense logits: one map per class at the input size (U-Net paper: its tile)
        assert summary.output_shape[:2] == (1, info.num_classes) and len(summary.output_shape) == 4
