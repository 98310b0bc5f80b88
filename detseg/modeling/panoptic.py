"""Panoptic output: instances laid over a semantic map (Kirillov et al. 2019's heuristic).

Instances are placed in decreasing score order; each takes the pixels no higher-scoring instance
took, and is dropped when most of it is already taken. Pixels left over keep the semantic map's
class as one region per class, dropped when smaller than ``min_area``.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..ops.paste_masks import paste_masks
from ..structures import Instances


def merge_panoptic(semantic: Tensor, instances: Instances, *, instance_score: float = 0.5,
                   overlap: float = 0.5, min_area: int = 64) -> tuple[Tensor, list[dict]]:
    """One image's panoptic segmentation.

    Args:
        semantic: ``Tensor[H, W]`` int, 0 background and ``k + 1`` for class ``k``.
        instances: detections of the same image; ``masks`` as ``[N, H, W]`` bool or ``[N, M, M]``
            probabilities (pasted here).
        instance_score: instances scoring below this are left out.
        overlap: an instance is dropped when more than this share of its mask is already taken.
        min_area: leftover semantic regions (and visible instance parts) smaller than this are dropped.

    Returns:
        (``Tensor[H, W]`` int32 segment ids, 0 = nothing; segments: list of ``{"id", "label",
        "isthing", "score", "area"}``, ``label`` in ``0..K-1``).
    """
    h, w = semantic.shape
    panoptic = torch.zeros(h, w, dtype=torch.int32, device=semantic.device)
    segments: list[dict] = []
    keep = instances.scores >= instance_score
    inst = instances[keep]
    if len(inst) and inst.masks is not None:
        masks = inst.masks
        if tuple(masks.shape[-2:]) != (h, w):
            masks = paste_masks(masks, inst.boxes, (h, w))
        taken = torch.zeros(h, w, dtype=torch.bool, device=semantic.device)
        for i in torch.argsort(inst.scores, descending=True).tolist():
            m = masks[i].to(torch.bool)
            area = int(m.sum())
            if area == 0:
                continue
            visible = m & ~taken
            if int(visible.sum()) < max(1, min_area) or 1 - visible.sum().item() / area > overlap:
                continue
            seg_id = len(segments) + 1
            panoptic[visible] = seg_id
            taken |= visible
            segments.append({"id": seg_id, "label": int(inst.labels[i]), "isthing": True,
                             "score": float(inst.scores[i]), "area": int(visible.sum())})
    free = panoptic == 0
    for value in torch.unique(semantic[free]).tolist():
        if value == 0 or value == 255:
            continue
        region = free & (semantic == value)
        area = int(region.sum())
        if area < min_area:
            continue
        seg_id = len(segments) + 1
        panoptic[region] = seg_id
        segments.append({"id": seg_id, "label": int(value) - 1, "isthing": False, "score": 1.0,
                         "area": area})
    return panoptic, segments
