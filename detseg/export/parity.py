"""Parity of an exported file with the eager model: the same detections and label maps up to the
float rounding of another runtime (``BOX_TOL``, ``SCORE_TOL``, ``PIXEL_TOL``), checked on a
deterministic synthetic photo or given images."""
from __future__ import annotations

import torch
from torch import Tensor

from .runtime import ExportedPredictor


class ParityError(RuntimeError):
    """An exported file's results differ from the eager model's beyond float rounding."""


# What "the same result" means for an export (float rounding of a different runtime, no more):
# boxes within 1e-2 px, scores within 1e-4, and label maps that differ in at most this share of
# pixels (where two classes' upsampled scores tie to rounding; tests/tools/test_export.py checks
# that every differing pixel is such a tie)
BOX_TOL, SCORE_TOL, PIXEL_TOL = 1e-2, 1e-4, 1e-4


def compare_predictions(eager: dict, exported: dict) -> dict:
    """Largest differences between two result dicts of one image (``Predictor`` outputs).

    Returns:
        ``{head: {"count": (n eager, n exported), "box": px, "score": ..., "labels_equal": bool,
        "mask_pixels": differing fraction}}`` for instance heads, ``{"pixels": differing
        fraction}`` for semantic heads.
    """
    out = {}
    for name, a in eager["heads"].items():
        b = exported["heads"][name]
        if isinstance(a, Tensor) and a.is_floating_point():  # class probabilities
            out[name] = {"score": float((a - b).abs().max()) if a.shape == b.shape else float("inf")}
            continue
        if isinstance(a, Tensor):
            out[name] = {"pixels": float((a != b).float().mean()) if a.shape == b.shape else 1.0}
            continue
        row = {"count": (len(a), len(b))}
        if len(a) == len(b) and len(a):
            order = tie_order(a, b)
            row["reordered"] = int((order != torch.arange(len(b))).sum())
            b = b[order]
            exported["heads"][name] = b  # aligned with the eager rows, for callers comparing masks
            row.update(box=float((a.boxes - b.boxes).abs().max()),
                       score=float((a.scores - b.scores).abs().max()),
                       labels_equal=bool((a.labels == b.labels).all()))
            if a.masks is not None:
                row["mask_pixels"] = float((a.masks != b.masks).float().mean())
        out[name] = row
    return out


def tie_order(a, b) -> Tensor:
    """Indices that align ``b``'s detections with ``a``'s: the identity, except where two
    detections' scores tie to float rounding (within ``SCORE_TOL``) and the runtimes ranked them
    the other way round; then the tied row with ``a``'s label and box is taken."""
    order = torch.arange(len(b))
    used = torch.zeros(len(b), dtype=torch.bool)
    for i in range(len(a)):
        fits = ((a.labels[i] == b.labels) & ((a.boxes[i] - b.boxes).abs().amax(1) <= BOX_TOL)
                & ((a.scores[i] - b.scores).abs() <= SCORE_TOL) & ~used)
        if fits[i]:
            j = i
        elif fits.any():
            j = int(torch.nonzero(fits)[0])
        else:  # no match: the first unused row, which the tolerances will then report
            j = i if not used[i] else int(torch.nonzero(~used)[0])
        order[i], used[j] = j, True
    return order


def parity_problems(diff: dict) -> list[str]:
    """The differences of ``compare_predictions`` that are more than float rounding."""
    problems = []
    for name, row in diff.items():
        if "count" not in row and "score" in row:
            if not row["score"] <= SCORE_TOL:
                problems.append(f"{name}: class probabilities differ by up to {row['score']:.3g}")
            continue
        if "pixels" in row:
            if row["pixels"] > PIXEL_TOL:
                problems.append(f"{name}: {row['pixels']:.2%} of the label map differs")
            continue
        if row["count"][0] != row["count"][1]:
            problems.append(f"{name}: {row['count'][0]} detections eagerly, {row['count'][1]} exported")
        elif row["count"][0]:
            if row["box"] > BOX_TOL or row["score"] > SCORE_TOL or not row["labels_equal"]:
                problems.append(f"{name}: boxes differ by up to {row['box']:.3g} px, scores by "
                                f"{row['score']:.3g}, labels equal: {row['labels_equal']}")
    return problems


def synthetic_photo(size: tuple[int, int] = (300, 400)):
    """A deterministic photo stand-in: a gradient with filled shapes, ``np.ndarray [H, W, 3]``."""
    import cv2
    import numpy as np
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) * 255 // (h + w)], -1).astype(np.uint8)
    cv2.circle(img, (w // 4, h // 3), min(h, w) // 6, (220, 40, 40), -1)
    cv2.rectangle(img, (w // 2, h // 2), (w // 2 + w // 4, h // 2 + h // 3), (30, 200, 60), -1)
    triangle = np.array([[w // 8, h - 10], [w // 3, h // 2], [w // 2, h - 10]], np.int32)
    cv2.fillPoly(img, [triangle], (40, 60, 220))
    return img


def fixed_proposals(meta: dict, image):
    """Selective-search proposals ``[P, 4]`` for ``image`` (file pixels) when the exported file's
    heads read them (``meta``: its metadata), else None. OpenCV's selective search gives other
    boxes on each call, so a comparison hands the same ones to both sides."""
    import numpy as np
    settings = meta["selective_search"]
    if settings is None:
        return None
    from ..modeling.proposals.selective_search import selective_search
    return selective_search(np.asarray(image), settings["mode"], settings["max_per_image"])


def check_parity(predictor, path: str, images=None) -> dict:
    """Run the exported file beside ``predictor`` on ``images`` (default: ``synthetic_photo()``, at
    the file's static size if it has one).

    Returns:
        the ``compare_predictions`` rows, one per image (under its index).

    Raises:
        ParityError: naming the first difference beyond float rounding.
    """
    runner = ExportedPredictor(path, score_threshold=predictor.score_threshold)
    size = runner.meta["static_size"]
    images = [synthetic_photo(tuple(size) if size else (300, 400))] if images is None else list(images)
    report = {}
    for i, image in enumerate(images):
        proposals = fixed_proposals(runner.meta, image)
        diff = compare_predictions(predictor(image, proposals), runner(image, proposals))
        problems = parity_problems(diff)
        if problems:
            raise ParityError(f"image {i}: " + "; ".join(problems))
        report[str(i)] = diff
    return report
