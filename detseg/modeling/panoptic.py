"""Panoptic output: instances laid over a semantic map, as detectron2's
``combine_semantic_and_instance_outputs`` does it (Kirillov et al. 2019's heuristic).

Instances are placed in decreasing score order down to a score threshold; each takes the pixels
no higher-scoring instance took, and is dropped when more than ``overlap`` of its mask is already
taken. Pixels left over take the semantic map's class, one segment per class, dropped when
smaller than ``min_area`` (detectron2's stuff area limit); value 0 of the semantic map
(background, or in a panoptic model "any thing") and 255 never become segments.
"""
from __future__ import annotations

from typing import Optional, Sequence

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
        min_area: leftover semantic regions smaller than this are dropped.

    Returns:
        (``Tensor[H, W]`` int32 segment ids, 0 = nothing; segments: list of ``{"id", "label",
        "isthing", "score", "area"}``: a thing's ``label`` is its instance label, a stuff
        segment's the semantic map's value less one).
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
            if (area - int(visible.sum())) / area > overlap:
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


def name_segments(segments: list[dict], class_names: Sequence[str], cat_ids: Sequence[int],
                  stuff_names: Optional[Sequence[str]] = None,
                  stuff_cat_ids: Optional[Sequence[int]] = None) -> list[dict]:
    """``merge_panoptic``'s segments with ``category_id`` (the dataset's) and ``name`` added: a
    thing's from its label and the classes, a stuff segment's from the stuff classes (a model
    trained on panoptic data), or from the classes when there are none (a semantic head over the
    thing classes)."""
    out = []
    for seg in segments:
        stuff = not seg["isthing"] and stuff_names is not None
        names, ids = (stuff_names, stuff_cat_ids) if stuff else (class_names, cat_ids)
        out.append({**seg, "category_id": int(ids[seg["label"]]), "name": names[seg["label"]]})
    return out
