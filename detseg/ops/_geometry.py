"""The one statement of RoI / spatial-pyramid bin geometry.

Every kernel (the pure-PyTorch reference, the C++ CPU kernel, the Triton GPU kernel) takes the
bin table computed here and only takes maxima over the windows it lists, so the rounding rules
live in exactly one place and every kernel is tested against the same numbers.

Bin table: ``int32 [K, B, 4]`` of ``(h_start, h_end, w_start, w_end)`` (end exclusive, clamped to
the feature map), with the bins of all pyramid levels concatenated in level order and each
level's ``l x l`` bins in row-major order. An empty bin has ``end <= start``.
"""
from __future__ import annotations

from typing import Optional, Sequence

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
    return window_bins(roi_windows(boxes.to(dtype), spatial_scale, mapping), levels, height, width)


def window_bins(win: torch.Tensor, levels: Sequence[int | tuple[int, int]], height: int,
                width: int) -> torch.Tensor:
    """``bin_table`` from windows already mapped to the feature map (``roi_windows``' output,
    ``Tensor[K, 4]`` inclusive (x_start, y_start, x_end, y_end), float32 or float64)."""
    dtype, boxes = win.dtype, win
    x0, y0, x1, y1 = win.unbind(1)
    roi_w = torch.clamp(x1 - x0 + 1, min=1)
    roi_h = torch.clamp(y1 - y0 + 1, min=1)
    k = boxes.shape[0]

    def bands(start: torch.Tensor, size: torch.Tensor, n: int, limit: int):
        idx = torch.arange(n, dtype=dtype, device=boxes.device)[None]
        # [K, 1], a true division in the boxes' dtype like torchvision's kernels. Not `size / n`:
        # on CUDA, torch divides by a Python scalar as a multiply by its reciprocal, which rounds
        # differently (a bin one cell off for some RoIs).
        step = (size / torch.full_like(size, n))[:, None]
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


# --------------------------------------------------------------------------- RoIAlign samples


def sample_table(rois: torch.Tensor, output_size: tuple[int, int], spatial_scale: float,
                 sampling_ratio: int, aligned: bool, height: int, width: int):
    """RoIAlign's bilinear sample points, per axis, for every RoI.

    RoIAlign averages ``grid_h x grid_w`` bilinear samples per output bin. A sample's row and
    column are independent, so each axis is tabulated on its own and a kernel combines row
    entry ``iy`` with column entry ``ix``: corner weights ``h_y * h_x, h_y * l_x, l_y * h_x,
    l_y * l_x`` at ``(lo_y, lo_x), (lo_y, hi_x), (hi_y, lo_x), (hi_y, hi_x)``, the sum divided by
    ``max(grid_h * grid_w, 1)``. The arithmetic is torchvision's, operation for operation in the
    rois' dtype (so a kernel that sums in the same order reproduces it bit for bit):
    ``y = (start + p * bin) + ((i + 0.5) * bin) / grid``, a sample outside ``[-1, size]`` on
    either axis contributes nothing, coordinates below 0 are clamped to 0 and the last row /
    column is repeated at the far edge.

    Args:
        rois: ``Tensor[K, 5]`` (batch index, x1, y1, x2, y2), float32 or float64.
        output_size: ``(pooled_h, pooled_w)``.
        spatial_scale: feature-map size / image size.
        sampling_ratio: samples per bin and axis; ``<= 0``: ``ceil(roi size / pooled size)``.
        aligned: shift by -0.5 pixel (pixel-centre alignment, Detectron2's ``ROIAlignV2``).
        height, width: feature-map size.

    Returns:
        ``(y_index, y_weight, x_index, x_weight, grid)``: ``y_index int32 [K, PH, SY, 2]`` =
        (lo, hi) row of each sample, ``lo = -1`` where the sample contributes nothing (outside
        the map or beyond this RoI's grid); ``y_weight [K, PH, SY, 2]`` = (h, l) = (1 - frac,
        frac); likewise ``x_*`` with ``[K, PW, SX, 2]``; ``grid int32 [K, 2]`` = (grid_h,
        grid_w) of each RoI (``SY`` / ``SX`` are their maxima).
    """
    dtype = rois.dtype
    ph, pw = output_size
    offset = 0.5 if aligned else 0.0
    scale = torch.tensor(spatial_scale, dtype=dtype, device=rois.device)
    start = rois[:, 1:3] * scale - offset  # (x, y)
    size = rois[:, 3:5] * scale - offset - start
    if not aligned:
        size = size.clamp(min=1.0)  # malformed RoIs count as 1x1, as in torchvision
    pooled = torch.tensor([pw, ph], dtype=dtype, device=rois.device)
    bin_size = size / pooled
    if sampling_ratio > 0:
        grid = torch.full_like(bin_size, sampling_ratio, dtype=torch.int32)
    else:
        # ceil(roi / pooled) converted to int; NaN and negative sizes give an empty grid.
        grid = torch.nan_to_num(torch.ceil(bin_size), nan=0.0).clamp(min=0).to(torch.int32)
    # a fixed ratio is the grid's size: no read of grid.max(), which on CUDA waits for the device
    s = sampling_ratio if sampling_ratio > 0 else None
    xs = _axis_samples(start[:, 0], bin_size[:, 0], grid[:, 0], pw, width, s)
    ys = _axis_samples(start[:, 1], bin_size[:, 1], grid[:, 1], ph, height, s)
    return ys[0], ys[1], xs[0], xs[1], grid.flip(1).contiguous()


def _axis_samples(start: torch.Tensor, bin_size: torch.Tensor, grid: torch.Tensor, pooled: int,
                  limit: int, s: Optional[int] = None):
    """One axis of ``sample_table``: ``(index int32 [K, P, S, 2], weight [K, P, S, 2])``;
    ``s``: S when every RoI's grid has it (a fixed sampling ratio), else the grids' maximum."""
    k, dtype, dev = start.shape[0], start.dtype, start.device
    if not k:
        s = 0
    elif s is None:
        s = int(grid.max())
    p = torch.arange(pooled, dtype=dtype, device=dev)
    i = torch.arange(s, dtype=dtype, device=dev) + 0.5
    first = start[:, None] + p[None] * bin_size[:, None]  # [K, P]
    within = (i[None] * bin_size[:, None]) / grid[:, None].to(dtype)  # [K, S]
    pos = first[:, :, None] + within[:, None, :]  # [K, P, S]
    # !(pos >= -1 && pos <= limit) rather than the reverse, so NaN counts as outside.
    valid = (pos >= -1.0) & (pos <= limit)
    valid &= (torch.arange(s, device=dev)[None, None] < grid[:, None, None])
    pos = torch.where(pos <= 0, torch.zeros((), dtype=dtype, device=dev), pos)
    pos = torch.where(valid, pos, torch.zeros((), dtype=dtype, device=dev))
    lo = pos.to(torch.int32)  # truncation == floor for pos >= 0
    edge = lo >= limit - 1
    lo = torch.where(edge, torch.full_like(lo, limit - 1), lo)
    hi = torch.where(edge, lo, lo + 1)
    pos = torch.where(edge, lo.to(dtype), pos)
    frac = pos - lo.to(dtype)
    lo = torch.where(valid, lo, torch.full_like(lo, -1))
    index = torch.stack([lo, hi], -1).contiguous()
    weight = torch.stack([1.0 - frac, frac], -1).contiguous()
    return index, weight
