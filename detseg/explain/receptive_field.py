"""Receptive field and stride of every tensor of a forward pass, followed op by op.

A ``FieldTracker`` (a ``TorchFunctionMode``) tags the network's input with a 1 x 1 field at
stride 1 and, after each torch function, derives its output's tag from its inputs' tags: a
convolution or pooling with kernel ``k``, dilation ``d`` and stride ``s`` widens the field by
``(k - 1) * d * jump`` and multiplies the jump (input pixels between neighbouring outputs) by
``s``; a transposed convolution divides it; a resize scales it; element-wise ops, concatenation
and normalisation keep the widest field of their inputs (a residual sum sees as far as its longest
branch). This is the textbook arithmetic (Araujo et al. 2019, "Computing receptive fields of
convolutional neural networks"), exact along a chain and the maximum over parallel branches,
which is what a learner counts by hand. An op the tracker does not know (RoI pooling, a
detection's box decoding) leaves its output untagged: a region feature has no field on the image.
"""
from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten


@dataclass(frozen=True)
class Field:
    """Receptive field (rows, cols) and jump / stride (rows, cols), in input pixels.

    ``stride`` is None once the spatial layout is gone (flattened, globally pooled): every
    output then sees the whole input, and ``size`` is the input's extent.
    """

    size: tuple[float, float]
    stride: Optional[tuple[float, float]]


def _pair(v) -> tuple[int, int]:
    if isinstance(v, (list, tuple)):
        return (int(v[0]), int(v[-1])) if v else (1, 1)
    return int(v), int(v)


def _arg(args, kwargs, index: int, name: str, default):
    if name in kwargs:
        return kwargs[name]
    return args[index] if len(args) > index else default


def _widen(f: Field, kernel, dilation, stride) -> Field:
    """A sliding window of ``kernel`` (dilated) moved by ``stride`` over a map with field ``f``."""
    if f.stride is None:
        return f
    size = tuple(f.size[a] + (kernel[a] - 1) * dilation[a] * f.stride[a] for a in range(2))
    return Field(size, tuple(f.stride[a] * stride[a] for a in range(2)))


def _whole(f: Field, t: Tensor) -> Field:
    """Every output sees the whole ``[..., h, w]`` map ``t`` (global pooling, flattening)."""
    if f.stride is None or t.dim() < 2:
        return f
    h, w = t.shape[-2:]
    return Field((f.size[0] + (h - 1) * f.stride[0], f.size[1] + (w - 1) * f.stride[1]), None)


def _resized(f: Field, before: Tensor, after: Tensor, taps: int = 1) -> Field:
    """A resize (interpolate, adaptive pooling) of ``before`` into ``after``'s spatial size;
    ``taps``: input cells an upsampled output mixes per axis (nearest 1, bilinear 2, bicubic 4)."""
    if f.stride is None or before.dim() != 4 or after.dim() != 4:
        return f
    (h, w), (oh, ow) = before.shape[-2:], after.shape[-2:]
    if oh == 1 and ow == 1 and (h > 1 or w > 1):
        return _whole(f, before)
    ratio = (h / max(oh, 1), w / max(ow, 1))
    # an adaptive pooling window spans ceil(in / out) cells; an upsampled output mixes `taps`
    kernel = tuple(math.ceil(r) if r > 1 else taps for r in ratio)
    size = tuple(f.size[a] + (kernel[a] - 1) * f.stride[a] for a in range(2))
    return Field(size, tuple(f.stride[a] * ratio[a] for a in range(2)))


class FieldTracker(TorchFunctionMode):
    """``with FieldTracker() as t: t.mark(x, Field((1, 1), (1, 1))); y = net(x); t.field(y)``."""

    def __init__(self):
        super().__init__()
        self._fields: dict[int, tuple[Any, Field]] = {}

    def mark(self, t: Tensor, field: Field) -> None:
        key = id(t)
        # The entry goes when the tensor does, so a later tensor at the same address is untagged.
        ref = weakref.ref(t, lambda _, key=key, fields=self._fields: fields.pop(key, None))
        self._fields[key] = (ref, field)

    def field(self, t: Any) -> Optional[Field]:
        entry = self._fields.get(id(t)) if isinstance(t, Tensor) else None
        return entry[1] if entry is not None and entry[0]() is t else None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        tensors = [a for a in tree_flatten((args, kwargs))[0] if isinstance(a, Tensor)]
        known = [(t, f) for t in tensors if (f := self.field(t)) is not None]
        if not known:
            return out
        field = self._rule(getattr(func, "__name__", ""), args, kwargs, known, out)
        if field is not None:
            for t in tree_flatten(out)[0]:
                if isinstance(t, Tensor) and t.is_floating_point():
                    self.mark(t, field)
        return out

    @staticmethod
    def _rule(name: str, args, kwargs, known, out) -> Optional[Field]:
        first, f = known[0]
        name = name.lstrip("_")
        if name in ("conv1d", "conv2d"):
            weight = args[1] if len(args) > 1 else kwargs["weight"]
            k = _pair(tuple(weight.shape[2:]) or 1)
            return _widen(f, k, _pair(_arg(args, kwargs, 5, "dilation", 1)),
                          _pair(_arg(args, kwargs, 3, "stride", 1)))
        if name == "conv_transpose2d":
            weight = args[1] if len(args) > 1 else kwargs["weight"]
            k, s = _pair(tuple(weight.shape[2:])), _pair(_arg(args, kwargs, 3, "stride", 1))
            if f.stride is None:
                return f
            # an output cell is made from ceil(k / s) neighbouring input cells
            size = tuple(f.size[a] + (math.ceil(k[a] / s[a]) - 1) * f.stride[a] for a in range(2))
            return Field(size, tuple(f.stride[a] / s[a] for a in range(2)))
        if name.startswith(("max_pool2d", "avg_pool2d")):
            k = _pair(_arg(args, kwargs, 1, "kernel_size", 1))
            stride = _arg(args, kwargs, 2, "stride", None)
            dilation = _arg(args, kwargs, 4, "dilation", 1) if name.startswith("max") else 1
            return _widen(f, k, _pair(dilation), _pair(stride) if stride not in (None, [], ()) else k)
        if name.startswith(("adaptive_avg_pool", "adaptive_max_pool", "interpolate", "upsample")):
            result = out[0] if isinstance(out, tuple) else out
            mode = str(_arg(args, kwargs, 3, "mode", "nearest")) if name.startswith("interpolate") else ""
            taps = 4 if "cubic" in mode else 2 if "linear" in mode else 1
            return _resized(f, first, result, taps) if isinstance(result, Tensor) else f
        if name in ("linear", "flatten", "mean", "sum", "amax", "max", "view", "reshape"):
            result = out[0] if isinstance(out, tuple) else out
            if isinstance(result, Tensor) and first.dim() == 4 and result.dim() < 4:
                return _whole(f, first)  # the map's rows and columns folded into one output
            return f
        # element-wise, concatenation, normalisation, activations: the widest input field
        spatial = [g for _, g in known if g.stride is not None]
        if not spatial:
            return f
        widest = max(spatial, key=lambda g: g.size[0] * g.size[1])
        return widest


def receptive_fields(model: torch.nn.Module, run, input: Tensor) -> dict[str, Optional[Field]]:
    """``{module path: Field of its output}`` for every module ``run()`` calls, ``input`` (the
    tensor the network reads, e.g. the uint8 images of the batch) tagged 1 x 1 at stride 1.
    A module whose output holds no tagged tensor (region features, detections) maps to None."""
    fields: dict[str, Optional[Field]] = {}
    tracker = FieldTracker()

    def hook(name):
        def record(module, inputs, output):
            if name in fields:
                return  # called again (a shared ReLU): the table shows its first call
            found = None
            for t in tree_flatten(output)[0]:
                found = tracker.field(t)
                if found is not None:
                    break
            fields[name] = found
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n]
    try:
        with tracker:
            tracker.mark(input, Field((1.0, 1.0), (1.0, 1.0)))
            run()
    finally:
        for h in handles:
            h.remove()
    return fields
