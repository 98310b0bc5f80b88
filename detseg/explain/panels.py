"""Pictures laid out as titled panels: what every explain view writes."""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np


def enlarge(image: np.ndarray, min_side: int = 160, nearest: bool = True) -> np.ndarray:
    """``image`` scaled up (never down) so that its short side is at least ``min_side``."""
    f = min_side / max(1, min(image.shape[:2]))
    if f <= 1:
        return image
    size = (round(image.shape[1] * f), round(image.shape[0] * f))
    return cv2.resize(image, size, interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR)


def titled(image: np.ndarray, title: str, strip: int = 18) -> np.ndarray:
    """``image`` (RGB uint8 ``[H, W, 3]``, or grey ``[H, W]``) under a white strip with ``title``."""
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    head = np.full((strip, image.shape[1], 3), 255, np.uint8)
    scale = 0.4
    text = title
    while text and cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] > image.shape[1] - 4:
        text = text[:-1]  # cut to the panel's width rather than spill over its neighbour
    cv2.putText(head, text, (2, strip - 5), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([head, image], axis=0)


def row(panels: Sequence[np.ndarray], gap: int = 6) -> np.ndarray:
    """Panels side by side, top-aligned on a white ground → RGB uint8."""
    h = max(p.shape[0] for p in panels)
    parts = []
    for i, p in enumerate(panels):
        if p.ndim == 2:
            p = np.repeat(p[:, :, None], 3, axis=2)
        pad = np.full((h - p.shape[0], p.shape[1], 3), 255, np.uint8)
        parts.append(np.concatenate([p, pad], axis=0))
        if i + 1 < len(panels):
            parts.append(np.full((h, gap, 3), 255, np.uint8))
    return np.concatenate(parts, axis=1)


def column(rows: Sequence[np.ndarray], gap: int = 6) -> np.ndarray:
    """Rows stacked, left-aligned on a white ground → RGB uint8."""
    w = max(r.shape[1] for r in rows)
    parts = []
    for i, r in enumerate(rows):
        parts.append(np.concatenate([r, np.full((r.shape[0], w - r.shape[1], 3), 255, np.uint8)], axis=1))
        if i + 1 < len(rows):
            parts.append(np.full((gap, w, 3), 255, np.uint8))
    return np.concatenate(parts, axis=0)


def heat_image(values: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """A 2-D array as a jet colour map (RGB uint8), ``lo`` blue to ``hi`` red (default: its range)."""
    v = values.astype(np.float32)
    lo = float(v.min()) if lo is None else lo
    hi = float(v.max()) if hi is None else hi
    scaled = np.zeros_like(v) if hi <= lo else (v - lo) / (hi - lo)
    grey = (np.clip(scaled, 0, 1) * 255).astype(np.uint8)
    return cv2.applyColorMap(grey, cv2.COLORMAP_JET)[:, :, ::-1].copy()


def write_rgb(path: str, rgb: np.ndarray) -> None:
    """Write an RGB picture as PNG, atomically (``visualize.write_png``)."""
    from ..visualize import write_png
    write_png(path, np.ascontiguousarray(rgb[:, :, ::-1]))
