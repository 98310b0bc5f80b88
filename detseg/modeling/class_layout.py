"""Which dimensions of a model's tensors index classes, and in what layout.

A trained model's class-dependent rows (classifier logits, class-specific box deltas, mask
channels, an FCN's score maps) can then move to a new class list by name: fine-tuning a COCO
detector on "person", "car" and "dog" keeps what it learnt of those three classes.

A *layout* describes one dimension as segments ``(kind, width)`` laid end to end: ``CLASS``
segments repeat ``width`` rows for each class in order, a ``BACKGROUND`` segment is ``width``
rows once. For K classes:

    SCORES_BG_LAST  [c0, c1, ..., cK-1, bg]           softmax logits (K + 1), background last
    PER_CLASS       [c0, ..., cK-1]                   mask channels, per-class SVMs (K)
    BOX_DELTAS      [c0 x4, ..., cK-1 x4]             class-specific box deltas (4K)
    BG_FIRST        [bg, c0, ..., cK-1]               semantic maps (0 background, k + 1 class k)

A module with class-dependent tensors declares them (``DeclaresClassAxes``) with a ``class_axes()``
method returning ``{tensor name within the module: {dim: layout}}``; ``class_axes(model)`` collects
them.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor, nn

CLASS, BACKGROUND = "class", "bg"
Layout = tuple[tuple[str, int], ...]
SCORES_BG_LAST: Layout = ((CLASS, 1), (BACKGROUND, 1))
PER_CLASS: Layout = ((CLASS, 1),)
BOX_DELTAS: Layout = ((CLASS, 4),)
BG_FIRST: Layout = ((BACKGROUND, 1), (CLASS, 1))


def layout_size(layout: Layout, num_classes: int) -> int:
    """Length of a dimension with ``layout`` for ``num_classes`` classes."""
    return sum(w * (num_classes if kind == CLASS else 1) for kind, w in layout)


def layout_classes(layout: Layout, size: int) -> Optional[int]:
    """The class count K for which ``layout_size(layout, K) == size``, or None if there is none."""
    fixed = sum(w for kind, w in layout if kind == BACKGROUND)
    per = sum(w for kind, w in layout if kind == CLASS)
    k, rest = divmod(size - fixed, per)
    return k if rest == 0 and k >= 0 else None


def source_rows(layout: Layout, source: Sequence[Optional[int]], old_classes: int) -> Tensor:
    """For each row of the new dimension, the row of the old one it copies, or -1 (fresh).

    Args:
        layout: the dimension's layout (the same for old and new).
        source: ``source[j]`` is the old class index of new class ``j``, or None (no match).
        old_classes: K of the old tensor.

    Returns:
        ``Tensor[layout_size(layout, len(source))]`` int64. Background rows map to background.
    """
    rows: list[int] = []
    old_start = 0
    for kind, w in layout:
        if kind == BACKGROUND:
            rows += range(old_start, old_start + w)
            old_start += w
            continue
        for s in source:
            rows += [-1] * w if s is None else range(old_start + s * w, old_start + (s + 1) * w)
        old_start += w * old_classes
    return torch.tensor(rows, dtype=torch.long)


def transfer_rows(fresh: Tensor, old: Tensor, axes: dict[int, Layout],
                  source: Sequence[Optional[int]], old_classes: int) -> Tensor:
    """``fresh`` with the rows of matched classes (and background) copied from ``old``.

    Args:
        fresh: the new model's tensor (its initialisation is kept where nothing matches).
        old: the file's tensor; every dimension not in ``axes`` has ``fresh``'s size.
        axes: ``{dim: layout}`` of the class dimensions (an FCN deconvolution has two).
        source: new class ``j`` -> old class index or None.
        old_classes: the old tensor's K.

    Returns:
        A new tensor shaped like ``fresh``. Copied values are bit-identical to ``old``'s.
    """
    picked = old
    keep = torch.ones((), dtype=torch.bool)
    for dim, layout in sorted(axes.items()):
        rows = source_rows(layout, source, old_classes)
        picked = picked.index_select(dim, rows.clamp(min=0).to(old.device))
        shape = [1] * fresh.dim()
        shape[dim] = len(rows)
        keep = keep & (rows >= 0).view(shape)
    return torch.where(keep.to(fresh.device), picked.to(fresh.device, fresh.dtype), fresh)


class DeclaresClassAxes:
    """Mixin of a module with class-dependent tensors of its own (every ``Head``, the box
    predictor, the mask branch): ``class_axes()`` names them, so that fine-tuning can move their
    class rows."""

    def class_axes(self) -> dict[str, dict[int, Layout]]:
        """``{tensor name within this module: {dim: layout}}``; {}: none of its own."""
        return {}


def class_axes(model: nn.Module) -> dict[str, dict[int, Layout]]:
    """``{state-dict key: {dim: layout}}`` of every class-dependent tensor of ``model``, from the
    ``class_axes()`` declarations of its ``DeclaresClassAxes`` modules."""
    out: dict[str, dict[int, Layout]] = {}
    for prefix, module in model.named_modules():
        if not isinstance(module, DeclaresClassAxes):
            continue
        for name, axes in module.class_axes().items():
            out[f"{prefix}.{name}" if prefix else name] = dict(axes)
    return out


__all__ = ["CLASS", "BACKGROUND", "SCORES_BG_LAST", "PER_CLASS", "BOX_DELTAS", "BG_FIRST", "Layout",
           "layout_size", "layout_classes", "source_rows", "transfer_rows", "class_axes",
           "DeclaresClassAxes"]
