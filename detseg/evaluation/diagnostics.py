"""What a detector gets wrong: a confusion matrix with background, per-class precision-recall
curves, F1 against the score threshold, and precision / recall / F1 at a chosen threshold.

All of it is computed from COCO results (file pixels, category ids) against the dataset's own
annotations, so it describes exactly what the COCO evaluator scored. The PR curves come from
pycocotools' own per-image matching at IoU 0.5 (``COCOeval.evalImgs``): their last recall is the
COCO evaluator's recall at IoU 0.5, 100 detections, all areas.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torchvision.ops import box_iou

MAX_CURVE_POINTS = 200  # per class in metrics.json: enough to draw, small enough to read


def _xyxy(xywh) -> list[float]:
    x, y, w, h = xywh
    return [x, y, x + w, y + h]


def confusion_matrix(gt_coco, results: list[dict], image_ids: Sequence[int], cat_ids: Sequence[int],
                     iou: float = 0.5, score_threshold: float = 0.5) -> np.ndarray:
    """Detections above ``score_threshold`` matched to ground truth of any class at ``iou``.

    Each detection, highest score first, takes the unmatched ground-truth box it overlaps most
    (IoU >= ``iou``); crowd regions absorb detections without counting them.

    Args:
        gt_coco: pycocotools ``COCO`` of the dataset.
        results: COCO results (``image_id``, ``category_id``, ``bbox`` xywh, ``score``).
        image_ids: the images evaluated.
        cat_ids: category id of each contiguous label (K of them).

    Returns:
        ``np.ndarray[K + 1, K + 1]`` int64 counts: rows are the truth, columns the prediction,
        index K is background (row K: false positives; column K: missed objects).
    """
    k = len(cat_ids)
    label = {c: i for i, c in enumerate(cat_ids)}
    conf = np.zeros((k + 1, k + 1), dtype=np.int64)
    by_image: dict[int, list[dict]] = {}
    for r in results:
        if r["score"] >= score_threshold and r["category_id"] in label:
            by_image.setdefault(int(r["image_id"]), []).append(r)
    for img_id in image_ids:
        anns = gt_coco.imgToAnns.get(int(img_id), [])
        gts = [a for a in anns if not a.get("iscrowd", 0) and a["category_id"] in label]
        crowd = [a for a in anns if a.get("iscrowd", 0)]
        dets = sorted(by_image.get(int(img_id), []), key=lambda r: -r["score"])
        gt_boxes = torch.tensor([_xyxy(a["bbox"]) for a in gts], dtype=torch.float64).reshape(-1, 4)
        crowd_boxes = torch.tensor([_xyxy(a["bbox"]) for a in crowd], dtype=torch.float64).reshape(-1, 4)
        taken = torch.zeros(len(gts), dtype=torch.bool)
        for d in dets:
            box = torch.tensor([_xyxy(d["bbox"])], dtype=torch.float64)
            col = label[d["category_id"]]
            overlaps = box_iou(box, gt_boxes)[0].masked_fill(taken, -1.0) if len(gts) else torch.zeros(0)
            if len(gts) and overlaps.max() >= iou:
                j = int(overlaps.argmax())
                taken[j] = True
                conf[label[gts[j]["category_id"]], col] += 1
            elif len(crowd) and _inside_fraction(box, crowd_boxes).max() >= iou:
                continue  # on a crowd region: neither right nor wrong, as in COCO
            else:
                conf[k, col] += 1
        for j in torch.nonzero(~taken).flatten().tolist():
            conf[label[gts[j]["category_id"]], k] += 1
    return conf


def _inside_fraction(box: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """Share of ``box`` ``[1, 4]`` inside each region ``[R, 4]`` (COCO's crowd IoU)."""
    lt = torch.maximum(box[:, None, :2], regions[None, :, :2])
    rb = torch.minimum(box[:, None, 2:], regions[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)[0]
    area = (box[0, 2:] - box[0, :2]).clamp(min=0).prod()
    return inter / area.clamp(min=1e-12)


def pr_curves(coco_eval, class_names: Sequence[str]) -> dict:
    """Per-class precision / recall / score along the ranked detections at IoU 0.5.

    Args:
        coco_eval: a pycocotools ``COCOeval`` after ``evaluate()`` (default parameters).
        class_names: names of its ``params.catIds`` in order.

    Returns:
        ``{name: {"recall": [...], "precision": [...], "scores": [...], "num_gt": int}}``, each
        list in decreasing score order (at most ``MAX_CURVE_POINTS`` points, the last kept).
    """
    p = coco_eval.params
    n_img, n_area = len(p.imgIds), len(p.areaRng)
    t = int(np.argmin(np.abs(np.asarray(p.iouThrs) - 0.5)))
    max_det = p.maxDets[-1]
    out = {}
    for k, name in enumerate(class_names):
        per_image = [coco_eval.evalImgs[k * n_area * n_img + i] for i in range(n_img)]  # area "all"
        per_image = [e for e in per_image if e is not None]
        num_gt = int(sum(int((np.asarray(e["gtIgnore"]) == 0).sum()) for e in per_image))
        if not per_image:
            out[name] = {"recall": [], "precision": [], "scores": [], "num_gt": num_gt}
            continue
        scores = np.concatenate([np.asarray(e["dtScores"][:max_det]) for e in per_image])
        order = np.argsort(-scores, kind="mergesort")  # COCOeval.accumulate's order
        matched = np.concatenate([np.asarray(e["dtMatches"])[t, :max_det] for e in per_image])[order]
        ignored = np.concatenate([np.asarray(e["dtIgnore"])[t, :max_det] for e in per_image])[order]
        keep = ~ignored.astype(bool)
        tp = np.cumsum((matched > 0)[keep])
        fp = np.cumsum((matched == 0)[keep])
        recall = tp / max(num_gt, 1)
        precision = tp / np.maximum(tp + fp, 1)
        idx = _thin(len(recall))
        out[name] = {"recall": recall[idx].tolist(), "precision": precision[idx].tolist(),
                     "scores": scores[order][keep][idx].tolist(), "num_gt": num_gt}
    return out


def _thin(n: int) -> np.ndarray:
    if n <= MAX_CURVE_POINTS:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, MAX_CURVE_POINTS).round().astype(int))


def f1_summary(curves: dict, score_threshold: float) -> dict:
    """Per class: the F1-optimal score threshold and its P / R / F1, and P / R / F1 at
    ``score_threshold`` (the last ranked detection scoring at least it)."""
    out = {}
    for name, c in curves.items():
        p, r, s = (np.asarray(c[key], dtype=np.float64) for key in ("precision", "recall", "scores"))
        if not len(p):
            zero = {"precision": 0.0, "recall": 0.0, "f1": 0.0}
            out[name] = {"best": {"threshold": None, **zero}, "at_threshold": zero}
            continue
        f1 = 2 * p * r / np.maximum(p + r, 1e-12)
        b = int(np.argmax(f1))
        at = np.nonzero(s >= score_threshold)[0]
        i = int(at[-1]) if len(at) else None
        out[name] = {
            "best": {"threshold": float(s[b]), "precision": float(p[b]), "recall": float(r[b]),
                     "f1": float(f1[b])},
            "at_threshold": ({"precision": float(p[i]), "recall": float(r[i]), "f1": float(f1[i])}
                             if i is not None else {"precision": 0.0, "recall": 0.0, "f1": 0.0}),
        }
    return out


def detection_diagnostics(gt_coco, coco_eval, results: list[dict], image_ids: Sequence[int],
                          cat_ids: Sequence[int], class_names: Sequence[str],
                          score_threshold: float = 0.5) -> dict:
    """Everything above as plain values (for ``metrics.json``)."""
    curves = pr_curves(coco_eval, class_names)
    conf = confusion_matrix(gt_coco, results, image_ids, cat_ids, score_threshold=score_threshold)
    return {"score_threshold": score_threshold, "labels": [*class_names, "background"],
            "confusion": conf.tolist(), "pr_curves": curves, "f1": f1_summary(curves, score_threshold)}
