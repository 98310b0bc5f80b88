"""The per-layer table of a model on one input, in the manner of Keras' ``model.summary()``:
each module's name, type, output shape for this input, parameters, FLOPs, receptive field and
stride. FLOPs come from torch's own counter (``torch.utils.flop_counter``, a multiply-add = 2
FLOPs), the fields from ``receptive_field.FieldTracker``."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional

import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from .receptive_field import Field, receptive_fields


@dataclass
class LayerRow:
    """One module of the table. ``depth``: its nesting (0 = a child of the model)."""

    name: str
    type: str
    depth: int
    output: str  # output shape(s) for this input, e.g. "[1, 64, 28, 28]"
    params: int  # its parameters, children included
    trainable: int
    flops: int  # its forward's FLOPs, children included
    field: Optional[tuple[float, float]]  # receptive field (rows, cols) in input pixels
    stride: Optional[tuple[float, float]]


def describe(output: Any) -> str:
    """A short text of a module's output: its tensors' shapes (at most three), else its type."""
    tensors = [t for t in tree_flatten(output)[0] if isinstance(t, torch.Tensor)]
    if not tensors:
        return type(output).__name__
    shapes = ", ".join(str(list(t.shape)) for t in tensors[:3])
    return shapes + (f" +{len(tensors) - 3}" if len(tensors) > 3 else "")


@dataclass
class LayerTable:
    """``rows`` and the model's totals (ops run by the model outside any child module included)."""

    rows: list[LayerRow]
    params: int
    trainable: int
    flops: int

    def as_dict(self) -> dict:
        return {"rows": [asdict(r) for r in self.rows], "params": self.params,
                "trainable": self.trainable, "flops": self.flops}


def layer_table(model: nn.Module, batch, *, max_depth: Optional[int] = None) -> LayerTable:
    """Run ``model`` (a detseg ``Model`` in eval mode) once on ``batch`` and tabulate every module
    that ran, in the order they finished, down to ``max_depth`` (None: all).

    Args:
        model: ``Model``; batch: a collated ``Batch`` (uint8 images ``[B, 3, H, W]``).

    Returns:
        ``LayerTable``; the receptive field and stride are in the pixels the network reads.
    """
    from torch.utils.flop_counter import FlopCounterMode
    model.eval()
    outputs: dict[str, str] = {}
    order: list[str] = []

    def hook(name):
        def record(module, inputs, output):
            if name not in outputs:  # a module called twice (a shared ReLU) shows its first call
                order.append(name)
                outputs[name] = describe(output)
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n]
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad():
            fields = receptive_fields(model, lambda: model(batch), batch.images)
            with counter:
                model(batch)
    finally:
        for h in handles:
            h.remove()
    flops = {name.split(".", 1)[1] if "." in name else "": sum(ops.values())
             for name, ops in counter.get_flop_counts().items()}
    modules = dict(model.named_modules())
    rows = []
    for name in order:
        depth = name.count(".")
        if max_depth is not None and depth > max_depth:
            continue
        m = modules[name]
        field: Optional[Field] = fields.get(name)
        params = list(m.parameters())
        rows.append(LayerRow(
            name=name, type=m._get_name(), depth=depth, output=outputs[name],
            params=sum(p.numel() for p in params),
            trainable=sum(p.numel() for p in params if p.requires_grad),
            flops=int(flops.get(name, 0)),
            field=None if field is None else tuple(round(v, 2) for v in field.size),
            stride=None if field is None or field.stride is None
            else tuple(round(v, 2) for v in field.stride)))
    every = list(model.parameters())
    return LayerTable(rows, sum(p.numel() for p in every),
                      sum(p.numel() for p in every if p.requires_grad), int(counter.get_total_flops()))


def _num(v: float) -> str:
    return f"{v:g}" if v < 1e5 else f"{v:.3g}"


def _pair_text(v: Optional[tuple[float, float]], whole: str = "-") -> str:
    if v is None:
        return whole
    return _num(v[0]) if v[0] == v[1] else f"{_num(v[0])}x{_num(v[1])}"


def _flops_text(n: int) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)


def format_layer_table(table: LayerTable) -> str:
    """The table as text: one line per row (a module after the modules inside it), totals at the end."""
    header = ("Layer (type)", "Output shape", "Param #", "FLOPs", "RF", "Stride")
    lines = []
    for r in table.rows:
        field = _pair_text(r.field)
        stride = _pair_text(r.stride, "whole" if r.field is not None else "-")
        lines.append((f"{r.name} ({r.type})", r.output,
                      f"{r.params:,}", _flops_text(r.flops), field, stride))
    widths = [max(len(str(x[i])) for x in [header, *lines]) for i in range(len(header))]
    rule = "-" * (sum(widths) + 2 * (len(widths) - 1))

    def fmt(cols):
        return "  ".join(str(c).ljust(w) if i < 2 else str(c).rjust(w)
                         for i, (c, w) in enumerate(zip(cols, widths)))

    out = [rule, fmt(header), rule.replace("-", "=")] + [fmt(c) for c in lines] + [rule]
    out += [f"Total params: {table.params:,}", f"Trainable params: {table.trainable:,}",
            f"Non-trainable params: {table.params - table.trainable:,}",
            f"FLOPs (this input): {_flops_text(table.flops)}",
            "RF: receptive field in input pixels (the widest branch); Stride: input pixels between "
            "neighbouring outputs; '-': not a map of the image (region features, detections)", rule]
    return "\n".join(out)
