"""COCO box (and mask) AP through pycocotools, or faster-coco-eval with identical numbers.

Predictions come in as ``Instances`` in the network's resized-image pixels; they are scaled to
each file's own size, labels are mapped back to the dataset's category ids, and the results JSON
(the standard COCO results format) is written to the run folder.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
from typing import Optional, Sequence

import numpy as np

from ..structures import Batch
from ..utils import quiet_loggers, write_json_atomic

logger = logging.getLogger(__name__)

BACKENDS = ("pycocotools", "faster_coco_eval")
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def _api(backend: str):
    if backend == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
        return COCO, COCOeval
    if backend == "faster_coco_eval":
        try:
            from faster_coco_eval import COCO, COCOeval_faster
        except ImportError:
            raise ImportError("evaluator.backend=faster_coco_eval needs "
                              "`pip install faster-coco-eval`") from None
        return COCO, COCOeval_faster
    raise ValueError(f"evaluator backend must be one of {BACKENDS}, got {backend!r}")


def to_file_pixels(inst, image_size: tuple[int, int], file_size: tuple[int, int]):
    """``Instances`` predicted on a resized image → the file's pixels; mask probabilities
    ``[N, M, M]`` are pasted into the file-sized image and thresholded at 0.5."""
    from ..ops.paste_masks import paste_masks
    (h, w), (oh, ow) = image_size, file_size
    out = inst.scale(ow / w, oh / h, (oh, ow))
    if inst.masks is not None and tuple(inst.masks.shape[-2:]) != (oh, ow):
        out.masks = paste_masks(inst.masks, out.boxes, (oh, ow))
    return out


def instances_to_results(image_id: int, inst, cat_ids: Sequence[int]) -> list[dict]:
    """COCO results dicts for one image's ``Instances`` in the file's pixels (masks, when
    present, full-size binary ``[N, H, W]``: see ``to_file_pixels``)."""
    if len(inst) == 0:
        return []
    b = inst.boxes.detach().cpu().double().numpy()
    xywh = np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=1)
    scores = inst.scores.detach().cpu().tolist()
    labels = inst.labels.detach().cpu().tolist()
    out = [{"image_id": int(image_id), "category_id": int(cat_ids[k]),
            "bbox": [round(float(v), 3) for v in box], "score": float(s)}
           for box, s, k in zip(xywh, scores, labels)]
    if inst.masks is not None:
        from pycocotools import mask as mask_util
        masks = inst.masks.detach().cpu().numpy().astype(np.uint8)
        for r, m in zip(out, masks):
            rle = mask_util.encode(np.asfortranarray(m))
            rle["counts"] = rle["counts"].decode("ascii")
            r["segmentation"] = rle
    return out


def evaluate_results(ann_file: str, results: list[dict], iou_type: str = "bbox",
                     backend: str = "pycocotools", class_names: Optional[Sequence[str]] = None,
                     image_ids: Optional[Sequence[int]] = None,
                     diagnostics_threshold: Optional[float] = None) -> dict:
    """COCO AP of a results list against ``ann_file``.

    Args:
        diagnostics_threshold: when set (bbox only), also ``"diagnostics"``: the confusion
            matrix at this score threshold, PR and F1 curves (``evaluation.diagnostics``).

    Returns:
        {"AP", "AP50", "AP75", "APs", "APm", "APl", "per_class_AP": {name: AP},
        "per_class_recall": {name: recall}} with AP in [0, 1] (-1 where COCO has no ground truth
        for a size range); a class's recall is COCO's at IoU 0.5, 100 detections, all areas: the
        share of its objects found at all (what a rare class lacks first).
    """
    COCO, COCOeval = _api(backend)
    gt = _ground_truth(COCO, ann_file)
    cat_ids = sorted(gt.getCatIds())
    names = list(class_names) if class_names else [gt.cats[c]["name"] for c in cat_ids]
    if not results:
        stats = {**{k: 0.0 for k in STAT_NAMES}, "per_class_AP": {n: 0.0 for n in names},
                 "per_class_recall": {n: 0.0 for n in names}}
        if diagnostics_threshold is not None and iou_type == "bbox":
            from .diagnostics import confusion_matrix
            ids = image_ids if image_ids is not None else gt.getImgIds()
            stats["diagnostics"] = {
                "score_threshold": diagnostics_threshold, "labels": [*names, "background"],
                "confusion": confusion_matrix(gt, [], ids, cat_ids).tolist(),
                "pr_curves": {n: {"recall": [], "precision": [], "scores": [], "num_gt": None}
                              for n in names},
                "f1": {}}
        return stats
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, iou_type)
        if image_ids is not None:
            ev.params.imgIds = sorted(int(i) for i in image_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = {k: float(v) for k, v in zip(STAT_NAMES, ev.stats[:6])}
    precision = np.asarray(ev.eval["precision"])  # [T, R, K, A, M]
    per_class = {}
    for k, name in enumerate(names):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        per_class[name] = float(p.mean()) if p.size else float("nan")
    stats["per_class_AP"] = per_class
    recall = np.asarray(ev.eval["recall"])  # [T, K, A, M]; T[0] is IoU 0.5
    stats["per_class_recall"] = {name: float(recall[0, k, 0, -1]) if recall[0, k, 0, -1] > -1 else float("nan")
                                 for k, name in enumerate(names)}
    if diagnostics_threshold is not None and iou_type == "bbox":
        stats["diagnostics"] = _diagnostics(ann_file, gt, ev, results, image_ids, cat_ids, names,
                                            backend, diagnostics_threshold)
    return stats


def _ground_truth(api: type, ann_file: str):
    """``api``'s COCO object over the annotation file as the data loader cleaned it (a crowd RLE
    whose counts are not numbers, say, is the box there, not a crash inside pycocotools)."""
    from ..data.coco import coco_from, read_cleaned
    with quiet_loggers("detseg.data.coco"):  # the loader logged each kind of problem already
        return coco_from(api, read_cleaned(ann_file), ann_file)


def _diagnostics(ann_file, gt, ev, results, image_ids, cat_ids, names, backend, threshold) -> dict:
    from .diagnostics import detection_diagnostics
    if backend != "pycocotools":  # the PR curves read pycocotools' per-image matches
        from pycocotools.coco import COCO as PyCOCO
        from pycocotools.cocoeval import COCOeval as PyCOCOeval
        gt = _ground_truth(PyCOCO, ann_file)
        with contextlib.redirect_stdout(io.StringIO()):
            ev = PyCOCOeval(gt, gt.loadRes(results), "bbox")
            if image_ids is not None:
                ev.params.imgIds = sorted(int(i) for i in image_ids)
            ev.evaluate()
    ids = ev.params.imgIds
    return detection_diagnostics(gt, ev, results, ids, cat_ids, names, threshold)


def format_per_class(per_class: dict) -> str:
    """A two-column text table of per-class AP (percent)."""
    width = max([len(n) for n in per_class] + [5])
    lines = [f"{'class':<{width}}  AP"]
    lines += [f"{n:<{width}}  {100 * v:5.1f}" for n, v in per_class.items()]
    return "\n".join(lines)


class COCOEvaluator:
    """Collects predictions batch by batch, then scores them.

    Args:
        ann_file: the dataset's COCO JSON.
        cat_ids: dataset category id of each contiguous label.
        class_names: names in label order (for the per-class table).
        iou_types: ``("bbox",)`` or ``("bbox", "segm")``.
        backend: ``"pycocotools"`` or ``"faster_coco_eval"``.
        output_dir: where ``coco_results.json`` is written (None: not written).
        diagnostics_threshold: also the box diagnostics (``evaluate_results``) at this score.
    """

    def __init__(self, ann_file: str, cat_ids: Sequence[int], class_names: Sequence[str],
                 iou_types: Sequence[str] = ("bbox",), backend: str = "pycocotools",
                 output_dir: Optional[str] = None, diagnostics_threshold: Optional[float] = None):
        _api(backend)
        self.ann_file, self.cat_ids, self.class_names = ann_file, list(cat_ids), list(class_names)
        self.iou_types, self.backend, self.output_dir = tuple(iou_types), backend, output_dir
        self.diagnostics_threshold = diagnostics_threshold
        self.reset()

    def reset(self) -> None:
        self.results: list[dict] = []
        self.image_ids: list[int] = []

    def process(self, batch, predictions: list) -> None:
        """predictions: one ``Instances`` per image of ``batch``, in the pixels of the image the
        model saw (``inst.image_size``), mapped here to each file's own size."""
        batch = Batch.of(batch)
        for img_id, inst, (oh, ow) in zip(batch.image_ids, predictions, batch.orig_sizes):
            self.image_ids.append(int(img_id))
            inst = to_file_pixels(inst, inst.image_size, (oh, ow))
            self.results.extend(instances_to_results(img_id, inst, self.cat_ids))

    def evaluate(self) -> dict:
        """Metrics for each IoU type: bbox keys plain (``AP``, ``AP50`` ...), segm keys prefixed
        ``segm_``; per-class tables under ``per_class_AP`` / ``segm_per_class_AP``."""
        from .. import comm as dist
        results, image_ids = dist.gather_lists(self.results), dist.gather_lists(self.image_ids)
        if not dist.is_main():
            return {}
        if self.output_dir:
            write_json_atomic(results, os.path.join(self.output_dir, "coco_results.json"))
        metrics: dict = {}
        for iou_type in self.iou_types:
            res = results if iou_type == "bbox" else [r for r in results if "segmentation" in r]
            stats = evaluate_results(self.ann_file, res, iou_type, self.backend, self.class_names,
                                     image_ids, self.diagnostics_threshold)
            prefix = "" if iou_type == "bbox" else f"{iou_type}_"
            metrics.update({prefix + k: v for k, v in stats.items()})
        return metrics

