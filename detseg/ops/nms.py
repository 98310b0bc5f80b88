"""Class-wise (batched) NMS as one op, ``detseg::batched_nms``, so that exported graphs hold it.

Eagerly it runs the same code detseg's heads always ran: torchvision's ``batched_nms`` (the
RPN's per-level NMS) or ``top_k_nms`` (the box heads' per-class NMS that stops once ``k`` boxes
survive). Under ``torch.export`` it is one node whose output length is data-dependent, and the
ONNX exporter turns it into ONNX ``NonMaxSuppression`` (``detseg.ops.onnx``), which runs every
class in one operator, exactly (no coordinate-offset trick).
"""
from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import batched_nms as tv_batched_nms
from torchvision.ops import nms


def class_wise_nms(boxes: Tensor, scores: Tensor, labels: Tensor, iou: float) -> Tensor:
    """NMS within each class; kept indices by decreasing score (torchvision's per-class path)."""
    keep = [idx[nms(boxes[idx], scores[idx], iou)]
            for idx in (torch.nonzero(labels == c).flatten() for c in torch.unique(labels))]
    if not keep:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    keep = torch.cat(keep)
    return keep[scores[keep].argsort(descending=True, stable=True)]


def top_k_nms(boxes: Tensor, scores: Tensor, labels: Tensor, iou: float, k: int) -> Tensor:
    """The ``k`` best survivors of class-wise NMS, without running NMS on every candidate.

    Whether a box survives depends only on higher-scoring boxes of its class. So NMS over the
    ``n`` highest-scoring candidates decides those candidates exactly, and once ``k`` of them
    survive no lower-scoring candidate can enter the top ``k``: the result equals
    ``class_wise_nms(...)[:k]`` while touching a fraction of the boxes (with a score threshold of
    0, Mask R-CNN has ~90k candidates per image, and full NMS dominated the head's time).
    """
    order = scores.argsort(descending=True, stable=True)
    n = max(4 * k, 1024)
    while True:
        top = order[:n]
        kept = class_wise_nms(boxes[top], scores[top], labels[top], iou)
        if len(kept) >= k or n >= len(order):
            return top[kept[:k]]
        n *= 4


@torch.library.custom_op("detseg::batched_nms", mutates_args=())
def batched_nms_op(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float, max_keep: int,
                   num_classes: int, search: bool) -> Tensor:
    """Indices (int64 ``Tensor[M]``, ``M <= max_keep``) of the boxes that survive NMS within their
    class, by decreasing score.

    Args:
        boxes: ``Tensor[N, 4]`` xyxy; scores: ``Tensor[N]``; idxs: ``Tensor[N]`` int64 classes in
            ``0..num_classes-1`` (``num_classes`` sizes the exported ONNX operator's score table).
        max_keep: at most this many indices (< 0: all).
        search: decide the top ``max_keep`` from the best candidates first (``top_k_nms``);
            otherwise torchvision's ``batched_nms`` over all of them. Same result either way.
    """
    if search and max_keep >= 0:
        return top_k_nms(boxes, scores, idxs, iou_threshold, max_keep)
    keep = tv_batched_nms(boxes, scores, idxs, iou_threshold)
    return keep if max_keep < 0 else keep[:max_keep]


@batched_nms_op.register_fake
def _(boxes, scores, idxs, iou_threshold, max_keep, num_classes, search):
    n = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty((n,), dtype=torch.int64)


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float, *, max_keep: int = -1,
                num_classes: int, search: bool = False) -> Tensor:
    """``detseg::batched_nms`` (see ``batched_nms_op``)."""
    return torch.ops.detseg.batched_nms(boxes, scores, idxs, float(iou_threshold), int(max_keep),
                                        int(num_classes), bool(search))
