"""The one statement of RoI / spatial-pyramid bin geometry.

Every kernel (the pure-PyTorch reference, the C++ CPU kernel, the Triton GPU kernel) takes the
bin table computed here and only takes maxima over the windows it lists, so the rounding rules
live in exactly one place and every kernel is tested against the same numbers.

Bin table: ``int32 [K, B, 4]`` of ``(h_start, h_end, w_start, w_end)`` (end exclusive, clamped to
the feature map), with the bins of all pyramid levels concatenated in level order and each
level's ``l x l`` bins in row-major order. An empty bin has ``end <= start``.
"""
from __future__ import annotations

from typing import Sequence

import torch

MAPPINGS = ("fast_rcnn", "sppnet")


def _round_half_away(x: torch.Tensor) -> torch.Tensor:
    # C's round(), which torchvision uses; torch.round rounds half to even.
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


def roi_windows(boxes: torch.Tensor, spatial_scale: float, mapping: str) -> torch.Tensor:
    """Map image-space boxes to inclusive feature-map windows.

    Args:
        boxes: ``Tensor[K, 4]`` (x1, y1, x2, y2) in image pixels.
        spatial_scale: feature-map size / image size (1/stride).
        mapping: ``"fast_rcnn"``: start = round(x1 * s), end = round(x2 * s) (Fast R-CNN,
            torchvision); ``"sppnet"``: left/top = floor(x1 * s) + 1, right/bottom =
            ceil(x2 * s) - 1 (SPPNet appendix), an inverted window collapsing to its middle cell.

    Returns:
        ``Tensor[K, 4]`` (x_start, y_start, x_end, y_end), inclusive, same dtype as ``boxes``.
    """
    scaled = boxes * torch.as_tensor(spatial_scale, dtype=boxes.dtype)
    if mapping == "fast_rcnn":
        return _round_half_away(scaled)
    if mapping == "sppnet":
        start = torch.floor(scaled[:, :2]) + 1
        end = torch.ceil(scaled[:, 2:]) - 1
        middle = torch.floor((start + end) / 2)
        inverted = end < start
        start = torch.where(inverted, middle, start)
        end = torch.where(inverted, middle, end)
        return torch.cat([start, end], dim=1)
    raise ValueError(f"mapping must be one of {MAPPINGS}, got {mapping!r}")


def bin_table(boxes: torch.Tensor, levels: Sequence[int | tuple[int, int]], spatial_scale: float,
              mapping: str,
              height: int, width: int) -> torch.Tensor:
    """Bins of every pyramid level for every RoI.

    Within a window of ``size`` cells starting at ``start``, bin ``i`` of ``l`` spans
    ``[start + floor(i * size / l), start + ceil((i + 1) * size / l))``, clamped to the map —
    torchvision's RoIPool arithmetic (computed in ``boxes.dtype``, as its kernels do).

    Args:
        boxes: ``Tensor[K, 4]`` image-space (x1, y1, x2, y2).
        levels: pyramid sizes, e.g. ``(6, 3, 2, 1)``; ``(7,)`` is Fast R-CNN's RoI pooling; a level
            may be ``(rows, cols)``.
        height, width: feature-map size.

    Returns:
        ``int32 Tensor[K, sum(l * l), 4]`` (h_start, h_end, w_start, w_end).
    """
    dtype = boxes.dtype if boxes.dtype in (torch.float32, torch.float64) else torch.float32
    win = roi_windows(boxes.to(dtype), spatial_scale, mapping)
    x0, y0, x1, y1 = win.unbind(1)
    roi_w = torch.clamp(x1 - x0 + 1, min=1)
    roi_h = torch.clamp(y1 - y0 + 1, min=1)
    k = boxes.shape[0]

    def bands(start: torch.Tensor, size: torch.Tensor, n: int, limit: int):
        idx = torch.arange(n, dtype=dtype, device=boxes.device)[None]
        step = (size / n)[:, None]  # [K, 1], in the boxes' dtype like torchvision's kernels
        lo = (torch.floor(idx * step) + start[:, None]).clamp(0, limit)
        hi = (torch.ceil((idx + 1) * step) + start[:, None]).clamp(0, limit)
        return lo, hi  # [K, n] each

    tables = []
    for lvl in levels:
        lh, lw = (lvl, lvl) if isinstance(lvl, int) else lvl
        hs, he = bands(y0, roi_h, lh, height)
        ws, we = bands(x0, roi_w, lw, width)
        # Row-major lh x lw: bin (i, j) takes row band i and column band j.
        t = torch.stack([
            hs[:, :, None].expand(k, lh, lw), he[:, :, None].expand(k, lh, lw),
            ws[:, None, :].expand(k, lh, lw), we[:, None, :].expand(k, lh, lw),
        ], dim=-1).reshape(k, lh * lw, 4)
        tables.append(t)
    if not tables:
        raise ValueError("levels must name at least one pyramid level")
    return torch.cat(tables, dim=1).to(torch.int32).contiguous()
