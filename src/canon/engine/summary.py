"""What `canon info` prints: parameters, multiply-adds, shapes, and a per-layer table.

Multiply-adds are counted from the operations actually run on one input:
- matrix products, convolutions (incl. transposed) and attention come from
  ``torch.utils.flop_counter.FlopCounterMode`` (which counts 2 FLOPs per multiply-add);
- pooling, which FlopCounterMode ignores, is counted by a hook as one operation per window
  element per output (kernel area × output elements), the usual convention.
Element-wise work (activations, normalisation, additions) is not counted, as in the papers.

The input: zeros of ``input_shape`` for image models; a model whose forward takes something else
(a detector's list of images, a translation model's token ids) defines
``example_inputs(input_shape=None) -> tuple`` of positional arguments, which is used instead.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["LayerRow", "ModelSummary", "summarize", "count_parameters", "example_inputs"]

_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
          nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.LPPool2d)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


@dataclass
class LayerRow:
    name: str
    kind: str
    output_shape: tuple
    params: int
    macs: int


@dataclass
class ModelSummary:
    name: str
    params: int
    trainable_params: int
    macs: int
    input_shape: tuple
    output_shape: tuple
    layers: list[LayerRow]

    def table(self) -> str:
        lines = [f"{'layer':<40} {'type':<22} {'output shape':<22} {'params':>12} {'MACs':>14}"]
        for r in self.layers:
            lines.append(f"{r.name[:40]:<40} {r.kind[:22]:<22} {str(list(r.output_shape))[:22]:<22} "
                         f"{r.params:>12,} {r.macs:>14,}")
        return "\n".join(lines)


def _pool_macs(module: nn.Module, inputs, output: torch.Tensor) -> int:
    if isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
        h_in, w_in = inputs[0].shape[-2:]
        h_out, w_out = output.shape[-2:]
        return output.numel() * -(-h_in // h_out) * -(-w_in // w_out)
    k = module.kernel_size
    area = 1
    for s in (k if isinstance(k, tuple) else (k,) * (output.dim() - 2)):
        area *= s
    return output.numel() * area


def _shape(out) -> tuple:
    """The shape of a tensor; of a dict, list or tuple of them, the tuple of their shapes."""
    if isinstance(out, torch.Tensor):
        return tuple(out.shape)
    if isinstance(out, dict):
        return tuple(_shape(v) for v in out.values())
    if isinstance(out, (tuple, list)) and out and all(isinstance(o, (torch.Tensor, tuple, list, dict)) for o in out):
        return tuple(_shape(o) for o in out)
    return ()


def example_inputs(model: nn.Module, input_shape: tuple[int, ...] | None) -> tuple:
    """Positional arguments for one forward pass: the model's own ``example_inputs`` when it has
    one, else zeros of ``input_shape`` (with the batch dimension)."""
    own = getattr(model, "example_inputs", None)
    if callable(own):
        inputs = own(input_shape)
        return inputs if isinstance(inputs, tuple) else (inputs,)
    if not input_shape:
        raise ValueError(f"{type(model).__name__} takes no image input and has no example_inputs(); "
                         "give an input shape")
    parameter = next(model.parameters(), None)
    return (torch.zeros(*input_shape, device=parameter.device if parameter is not None else None),)


def _input_shape(inputs: tuple) -> tuple:
    if len(inputs) == 1:
        return _shape(inputs[0]) if not isinstance(inputs[0], list) else (len(inputs[0]), *_shape(inputs[0][0]))
    return tuple(_shape(i) for i in inputs)


def summarize(model: nn.Module, input_shape: tuple[int, ...] | None, name: str | None = None) -> ModelSummary:
    """Run one forward pass in eval mode (on zeros of ``input_shape`` with its batch dimension, or on
    the model's ``example_inputs``) and count."""
    model.eval()
    inputs = example_inputs(model, input_shape)
    rows: dict[str, LayerRow] = {}
    pool_macs: dict[str, int] = {}
    hooks = []
    for mod_name, module in model.named_modules():
        if mod_name == "" or next(module.children(), None) is not None:
            continue  # leaves only

        def hook(mod, inputs, output, mod_name=mod_name):
            if isinstance(mod, _POOLS):
                pool_macs[mod_name] = pool_macs.get(mod_name, 0) + _pool_macs(mod, inputs, output)
            rows[mod_name] = LayerRow(mod_name, type(mod).__name__, _shape(output),
                                      sum(p.numel() for p in mod.parameters(recurse=False)), 0)

        hooks.append(module.register_forward_hook(hook))
    counter = FlopCounterMode(display=False, depth=None)
    try:
        with torch.no_grad(), counter:
            output = model(*inputs)
    finally:
        for h in hooks:
            h.remove()
    flops_by_module = counter.get_flop_counts()
    for mod_name, row in rows.items():
        key = f"{type(model).__name__}.{mod_name}" if f"{type(model).__name__}.{mod_name}" in flops_by_module \
            else mod_name
        module_flops = sum(flops_by_module.get(key, {}).values())
        row.macs = module_flops // 2 + pool_macs.get(mod_name, 0)
    total = counter.get_total_flops() // 2 + sum(pool_macs.values())
    params = count_parameters(model)
    return ModelSummary(name=name or type(model).__name__, params=params,
                        trainable_params=count_parameters(model, trainable_only=True), macs=int(total),
                        input_shape=_input_shape(inputs), output_shape=_shape(output), layers=list(rows.values()))
