"""Selective search proposals (Uijlings et al. 2013) through OpenCV's ximgproc: the algorithm on
one image. The per-dataset cache (R-CNN and SPPNet precompute proposals once, as their authors
did) is ``detseg.data.proposal_cache``."""
from __future__ import annotations

import cv2
import numpy as np

MODES = ("fast", "quality")


def selective_search(image: np.ndarray, mode: str = "fast", max_proposals: int = 2000,
                     min_size: int = 2) -> np.ndarray:
    """Proposals for one RGB image.

    Args:
        image: ``np.ndarray[H, W, 3]`` uint8 RGB.
        mode: ``"fast"`` or ``"quality"`` (OpenCV's two presets).
        max_proposals: keep the first (best-ranked) this many.
        min_size: drop boxes narrower or shorter than this (pixels).

    Returns:
        ``np.ndarray[P, 4]`` float32 xyxy, in OpenCV's ranking order, duplicates removed.
    """
    if mode not in MODES:
        raise ValueError(f"selective search mode must be one of {MODES}, got {mode!r}")
    ss = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    ss.setBaseImage(np.ascontiguousarray(image[..., ::-1]))  # OpenCV wants BGR
    if mode == "fast":
        ss.switchToSelectiveSearchFast()
    else:
        ss.switchToSelectiveSearchQuality()
    rects = ss.process().astype(np.float32).reshape(-1, 4)  # x, y, w, h
    boxes = np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:]], axis=1)
    keep = (rects[:, 2] >= min_size) & (rects[:, 3] >= min_size)
    boxes = boxes[keep]
    _, first = np.unique(boxes, axis=0, return_index=True)
    return boxes[np.sort(first)][:max_proposals]
