"""One region's pooling drawn on its feature map: SPPNet's pyramid bins, Fast R-CNN's RoI-pool bins
(both rounded to whole cells) and RoIAlign's bilinear sample points (not rounded), computed by the
same geometry code the kernels use (``ops._geometry``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import cv2
import numpy as np
import torch

from ..ops._geometry import bin_table, sample_table


@dataclass
class RegionGeometry:
    """Everything in feature-map cells of a ``height x width`` map (``stride`` image pixels each)."""

    box: tuple[float, float, float, float]  # the region, image pixels (x1, y1, x2, y2)
    stride: int
    height: int
    width: int
    spp_levels: tuple[int, ...]
    spp_bins: np.ndarray  # int [B, 4] (h_start, h_end, w_start, w_end), end exclusive
    roi_pool_size: int
    roi_pool_bins: np.ndarray  # int [size * size, 4]
    align_size: int
    align_points: np.ndarray  # float [P, 2] (x, y) of every sample that counts, in cells


def region_geometry(box: Sequence[float], stride: int, height: int, width: int,
                    spp_levels: Sequence[int] = (4, 2, 1), roi_pool_size: int = 7,
                    align_size: int = 7, sampling_ratio: int = 2, aligned: bool = True) -> RegionGeometry:
    """The bins and samples of one box on a ``height x width`` map of stride ``stride``."""
    boxes = torch.tensor([list(map(float, box))], dtype=torch.float64)
    scale = 1.0 / stride
    spp = bin_table(boxes, list(spp_levels), scale, "sppnet", height, width)[0].numpy()
    pool = bin_table(boxes, [roi_pool_size], scale, "fast_rcnn", height, width)[0].numpy()
    rois = torch.cat([torch.zeros(1, 1, dtype=torch.float64), boxes], dim=1)
    y_index, y_weight, x_index, x_weight, _ = sample_table(
        rois, (align_size, align_size), scale, sampling_ratio, aligned, height, width)
    # a sample's position is its lower corner plus its fraction; lo = -1 marks one that does not count
    ys = (y_index[0, ..., 0] + y_weight[0, ..., 1]).flatten()
    yv = (y_index[0, ..., 0] >= 0).flatten()
    xs = (x_index[0, ..., 0] + x_weight[0, ..., 1]).flatten()
    xv = (x_index[0, ..., 0] >= 0).flatten()
    gy, gx = torch.meshgrid(ys[yv], xs[xv], indexing="ij")
    points = torch.stack([gx.flatten(), gy.flatten()], dim=1).numpy()
    return RegionGeometry(tuple(float(v) for v in box), stride, height, width, tuple(spp_levels), spp,
                          roi_pool_size, pool, align_size, points)


def _canvas(fmap: np.ndarray, cell: int) -> np.ndarray:
    """A ``[h, w]`` map (any range) as grey cells of ``cell`` pixels, with faint cell lines."""
    lo, hi = float(fmap.min()), float(fmap.max())
    grey = np.zeros_like(fmap) if hi <= lo else (fmap - lo) / (hi - lo)
    img = np.repeat(np.repeat((grey * 200 + 30).astype(np.uint8), cell, 0), cell, 1)
    img = np.repeat(img[:, :, None], 3, axis=2)
    img[::cell, :] = (img[::cell, :] * 0.7).astype(np.uint8)
    img[:, ::cell] = (img[:, ::cell] * 0.7).astype(np.uint8)
    return img


def draw_region_geometry(g: RegionGeometry, fmap: Optional[np.ndarray] = None, margin: int = 2,
                         min_side: int = 240) -> list[tuple[str, np.ndarray]]:
    """Three pictures (title, RGB) of ``g`` on the map ``fmap`` ``[h, w]`` (default: blank), cut to
    the region's cells and ``margin`` cells around them."""
    fmap = np.zeros((g.height, g.width), np.float32) if fmap is None else fmap
    x0, y0, x1, y1 = (v / g.stride for v in g.box)  # the region in cells
    r0, c0 = max(0, int(np.floor(y0)) - margin), max(0, int(np.floor(x0)) - margin)
    r1 = min(g.height, max(r0 + 1, int(np.ceil(y1)) + margin))
    c1 = min(g.width, max(c0 + 1, int(np.ceil(x1)) + margin))
    cell = max(4, int(np.ceil(min_side / max(1, min(r1 - r0, c1 - c0)))))
    cell = min(cell, max(4, 720 // max(1, c1 - c0)))  # at most ~720 px wide

    def px(col, row):  # cell coordinates -> picture pixels
        return int(round((col - c0) * cell)), int(round((row - r0) * cell))

    def base():
        img = _canvas(fmap[r0:r1, c0:c1], cell)
        cv2.rectangle(img, px(x0, y0), px(x1, y1), (255, 255, 0), 2)
        return img

    level_colours = [(255, 80, 80), (80, 200, 80), (80, 120, 255), (230, 180, 40), (200, 80, 200)]
    spp = base()
    start = 0
    for li, lvl in enumerate(g.spp_levels):
        colour = level_colours[li % len(level_colours)]
        inset = li  # the levels nest a pixel apart so that coinciding edges stay visible
        for hs, he, ws, we in g.spp_bins[start:start + lvl * lvl]:
            (a, b), (c, d) = px(ws, hs), px(we, he)
            cv2.rectangle(spp, (a + inset, b + inset), (c - 1 - inset, d - 1 - inset), colour, 1)
        start += lvl * lvl
    pool = base()
    for hs, he, ws, we in g.roi_pool_bins:
        (a, b), (c, d) = px(ws, hs), px(we, he)
        cv2.rectangle(pool, (a, b), (c - 1, d - 1), (255, 80, 80), 1)
    align = base()
    for x, y in g.align_points:  # continuous coordinates: cell i's centre is at i
        cv2.circle(align, px(x + 0.5, y + 0.5), 2, (255, 80, 80), -1)
    levels = "+".join(f"{v}x{v}" for v in g.spp_levels)
    return [(f"SPP {levels} (SPPNet rounding)", spp),
            (f"RoI pool {g.roi_pool_size}x{g.roi_pool_size} (whole cells)", pool),
            (f"RoIAlign {g.align_size}x{g.align_size}: {len(g.align_points)} samples", align)]


def feature_for(box: Sequence[float], strides: dict[str, int], min_cells: int = 4) -> str:
    """The coarsest map on which ``box`` spans at least ``min_cells`` cells each way (else the
    finest): where its bins are visibly different cells."""
    side = min(box[2] - box[0], box[3] - box[1])
    fits = [n for n, s in strides.items() if side / s >= min_cells]
    if fits:
        return max(fits, key=lambda n: strides[n])
    return min(strides, key=lambda n: strides[n])
