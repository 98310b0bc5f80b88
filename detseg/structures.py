"""Conventions and small structures shared across data, heads and evaluation.

Boxes are float32 ``(x1, y1, x2, y2)`` in absolute pixels (ARCHITECTURE.md, "Conventions").
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

# Semantic maps: 0 background, k + 1 for class k, and this value where a pixel is ignored
# (crowd regions, batch padding); losses and metrics skip it.
SEMANTIC_IGNORE = 255


class Instances:
    """Detections of one image; every field has the same length ``N``.

    Args:
        image_size: (H, W) of the image the boxes refer to.
        boxes: ``Tensor[N, 4]`` xyxy; scores: ``Tensor[N]``; labels: ``Tensor[N]`` int64 in
            ``0..K-1``; masks (optional): ``Tensor[N, H, W]`` bool/uint8 or ``[N, M, M]`` logits.
    """

    def __init__(self, image_size: tuple[int, int], boxes: Tensor, scores: Tensor, labels: Tensor,
                 masks: Optional[Tensor] = None):
        n = boxes.shape[0]
        if boxes.dim() != 2 or boxes.shape[1] != 4:
            raise ValueError(f"boxes must be [N, 4], got {tuple(boxes.shape)}")
        for name, t in (("scores", scores), ("labels", labels), ("masks", masks)):
            if t is not None and t.shape[0] != n:
                raise ValueError(f"Instances: {name} has {t.shape[0]} entries, boxes have {n}")
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.boxes, self.scores, self.labels, self.masks = boxes, scores, labels, masks

    def __len__(self) -> int:
        return self.boxes.shape[0]

    def __getitem__(self, idx) -> "Instances":
        return Instances(self.image_size, self.boxes[idx], self.scores[idx], self.labels[idx],
                         None if self.masks is None else self.masks[idx])

    def to(self, device) -> "Instances":
        return Instances(self.image_size, self.boxes.to(device), self.scores.to(device),
                         self.labels.to(device), None if self.masks is None else self.masks.to(device))

    def scale(self, sx: float, sy: float, image_size: tuple[int, int]) -> "Instances":
        """Boxes scaled to another resolution of the same image (masks are left to the caller)."""
        f = torch.tensor([sx, sy, sx, sy], dtype=self.boxes.dtype, device=self.boxes.device)
        return Instances(image_size, self.boxes * f, self.scores, self.labels, self.masks)

    def __repr__(self) -> str:
        return f"Instances(num={len(self)}, image_size={self.image_size}, masks={self.masks is not None})"


def clip_boxes(boxes: Tensor, image_size: tuple[int, int]) -> Tensor:
    """Clip ``Tensor[N, 4]`` xyxy boxes to an (H, W) image."""
    h, w = image_size
    return torch.stack([boxes[:, 0].clamp(0, w), boxes[:, 1].clamp(0, h),
                        boxes[:, 2].clamp(0, w), boxes[:, 3].clamp(0, h)], dim=1)


def nonempty(boxes: Tensor, min_size: float = 0.0) -> Tensor:
    """``Tensor[N]`` bool: boxes wider and taller than ``min_size``."""
    return ((boxes[:, 2] - boxes[:, 0]) > min_size) & ((boxes[:, 3] - boxes[:, 1]) > min_size)
