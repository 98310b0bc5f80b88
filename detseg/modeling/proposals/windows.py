"""Dense multi-scale sliding windows: every size and aspect ratio at every stride step."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

from ...structures import Batch


def window_sizes(sizes: Sequence[float], aspect_ratios: Sequence[float]) -> list[tuple[float, float]]:
    """(w, h) in pixels of each window, size-major: area ``size ** 2``, ``h / w = ratio``. The
    one statement of the window shapes that the dense windows and the sliding-window head use."""
    out = []
    for s in sizes:
        for r in aspect_ratios:
            w = s / math.sqrt(r)
            out.append((w, w * r))
    return out


def window_shapes(sizes: Sequence[float], aspect_ratios: Sequence[float]) -> Tensor:
    """``Tensor[S * A, 2]`` float32 (w, h) of each window (``window_sizes``)."""
    return torch.tensor(window_sizes(sizes, aspect_ratios), dtype=torch.float32)


def dense_windows(image_size: tuple[int, int], sizes: Sequence[float], aspect_ratios: Sequence[float],
                  stride: int) -> Tensor:
    """Windows lying inside an (H, W) image, top-left corners on a ``stride`` grid.

    Returns:
        ``Tensor[N, 4]`` xyxy, ordered by (shape, y, x).
    """
    h, w = image_size
    boxes = []
    for ww, hh in window_shapes(sizes, aspect_ratios).tolist():
        ww, hh = min(ww, w), min(hh, h)
        xs = torch.arange(0, w - ww + 1e-3, stride, dtype=torch.float32)
        ys = torch.arange(0, h - hh + 1e-3, stride, dtype=torch.float32)
        y, x = torch.meshgrid(ys, xs, indexing="ij")
        x, y = x.reshape(-1), y.reshape(-1)
        boxes.append(torch.stack([x, y, x + ww, y + hh], dim=1))
    return torch.cat(boxes).unique(dim=0) if boxes else torch.zeros(0, 4)


class DenseWindowProposals(nn.Module):
    """Proposal source: dense windows for each image of the batch (no learning, no losses)."""

    def __init__(self, *, sizes: Sequence[float], aspect_ratios: Sequence[float], stride: int):
        super().__init__()
        self.sizes, self.aspect_ratios, self.stride = list(sizes), list(aspect_ratios), stride

    def forward(self, features, batch) -> tuple[list[Tensor], dict]:
        batch = Batch.of(batch)  # a plain dict from one's own pipeline, read as a Batch
        return [dense_windows(hw, self.sizes, self.aspect_ratios, self.stride)
                for hw in batch.image_sizes], {}
