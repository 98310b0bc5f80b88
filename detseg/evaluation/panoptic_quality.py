"""Panoptic quality (PQ, SQ, RQ; Kirillov et al. 2019) with the COCO panoptic reference's rules.

The definitions follow panopticapi's ``pq_compute`` (the COCO panoptic evaluation), so that a
figure here is comparable with detectron2's and MMDetection's:

- a predicted and a ground-truth segment of the same category match when their IoU is above 0.5
  (so each segment matches at most once); the union leaves out the predicted pixels that fall on
  void (id 0 in the ground-truth map);
- ground-truth crowd segments (``iscrowd: 1``) are never matched and never false negatives; an
  unmatched prediction is not a false positive when more than half of it lies on void or on the
  crowd region of its own category;
- per category PQ = sum of matched IoUs / (TP + FP / 2 + FN / 2), SQ = that sum / TP (0 without
  TP), RQ = TP / (TP + FP / 2 + FN / 2); the averages (all, things, stuff) run over the categories
  with at least one TP, FP or FN.

Segment maps are integer id maps (``[H, W]``, 0 = void / unlabelled); the COCO panoptic PNGs store
``id = R + 256 G + 256^2 B`` (``detseg.data.panoptic_format.rgb_to_id`` / ``id_to_rgb``).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np

from ..data.panoptic_format import VOID, read_segment_png, segment_areas

MATCH_IOU = 0.5


@dataclass
class CategoryStats:
    """One category's running sums: matched IoU, TP, FP, FN."""

    iou: float = 0.0
    tp: int = 0
    fp: int = 0
    fn: int = 0

    def add(self, other: "CategoryStats") -> None:
        self.iou += other.iou
        self.tp, self.fp, self.fn = self.tp + other.tp, self.fp + other.fp, self.fn + other.fn


@dataclass
class PQStats:
    """Per-category sums over the images seen; ``summary`` turns them into PQ / SQ / RQ."""

    per_category: dict[int, CategoryStats] = field(default_factory=dict)

    def __getitem__(self, category_id: int) -> CategoryStats:
        return self.per_category.setdefault(int(category_id), CategoryStats())

    def add(self, other: "PQStats") -> None:
        for cat, stats in other.per_category.items():
            self[cat].add(stats)

    def average(self, categories: dict[int, dict], isthing: bool | None = None) -> tuple[dict, dict]:
        """Mean PQ / SQ / RQ over the categories (only things, only stuff, or all when ``isthing``
        is None) that have a TP, FP or FN, with their count ``n``; and the per-category figures."""
        totals = {"pq": 0.0, "sq": 0.0, "rq": 0.0}
        per_class, n = {}, 0
        for cat, info in categories.items():
            if isthing is not None and bool(info.get("isthing", 1)) != isthing:
                continue
            s = self[cat]
            if s.tp + s.fp + s.fn == 0:
                per_class[cat] = {"pq": 0.0, "sq": 0.0, "rq": 0.0}
                continue
            n += 1
            denom = s.tp + 0.5 * s.fp + 0.5 * s.fn
            figures = {"pq": s.iou / denom, "sq": s.iou / s.tp if s.tp else 0.0, "rq": s.tp / denom}
            per_class[cat] = figures
            for k in totals:
                totals[k] += figures[k]
        mean = {k: (v / n if n else 0.0) for k, v in totals.items()}
        return {**mean, "n": n}, per_class

    def summary(self, categories: dict[int, dict]) -> dict:
        """``{"All", "Things", "Stuff": {pq, sq, rq, n}, "per_class": {category_id: {...}}}``."""
        out = {}
        for name, isthing in (("All", None), ("Things", True), ("Stuff", False)):
            out[name], per_class = self.average(categories, isthing)
            if isthing is None:
                out["per_class"] = per_class
        return out


def _predicted_areas(ids: np.ndarray, segments: dict[int, dict], categories: dict, image: str) -> dict[int, int]:
    """Pixel count of every predicted segment; every id of the map but void must be listed in
    ``segments``, every listed one must appear, with a known category (a ValueError names the
    image and the segment)."""
    areas = segment_areas(ids)
    unlisted = sorted(set(areas) - set(segments))
    if unlisted:
        raise ValueError(f"image {image}: predicted segment id(s) {unlisted} are in the map but not "
                         f"in segments_info")
    absent = sorted(set(segments) - set(areas))
    if absent:
        raise ValueError(f"image {image}: predicted segment id(s) {absent} are in segments_info but "
                         f"not in the map")
    for seg_id, seg in segments.items():
        if seg["category_id"] not in categories:
            raise ValueError(f"image {image}: predicted segment {seg_id} has unknown category_id "
                             f"{seg['category_id']}")
    return areas


def pq_image(gt_ids: np.ndarray, gt_segments: list[dict], pred_ids: np.ndarray,
             pred_segments: list[dict], categories: dict[int, dict], image: str = "?") -> PQStats:
    """TP / FP / FN and matched IoU per category for one image.

    Args:
        gt_ids, pred_ids: ``[H, W]`` integer segment ids (0 = void).
        gt_segments, pred_segments: COCO panoptic ``segments_info`` entries (``id``,
            ``category_id``; ``iscrowd`` for the ground truth).
        categories: ``{category_id: {"isthing": 0 | 1, ...}}``.
        image: how errors name the image.
    Raises:
        ValueError: a predicted map id missing from its segments or a predicted segment missing
            from its map (the reference's checks), a category id not in ``categories``, or maps
            of different sizes.
    """
    if gt_ids.shape != pred_ids.shape:
        raise ValueError(f"image {image}: prediction {tuple(pred_ids.shape)} and ground truth "
                         f"{tuple(gt_ids.shape)} differ in size")
    gt = {int(s["id"]): s for s in gt_segments}
    pred = {int(s["id"]): s for s in pred_segments}
    pred_area = _predicted_areas(pred_ids, pred, categories, image)
    # The ground truth's areas are its entries' ``area`` (the reference reads them so; a map
    # count stands in where an entry has none), and ids of the map that no entry lists are
    # neither matched nor void, as in the reference: tools/check_data.py reports both.
    counted = segment_areas(gt_ids)
    gt_area = {k: int(s["area"]) if "area" in s else counted.get(k, 0) for k, s in gt.items()}
    for seg_id, seg in gt.items():
        if seg["category_id"] not in categories:
            raise ValueError(f"image {image}: ground-truth segment {seg_id} has unknown category_id "
                             f"{seg['category_id']}")

    # intersections of every (ground truth, prediction) pair present, void included
    pairs = gt_ids.astype(np.int64).ravel() * (1 << 32) + pred_ids.astype(np.int64).ravel()
    keys, counts = np.unique(pairs, return_counts=True)
    inter = {(int(k >> 32), int(k & 0xFFFFFFFF)): int(c) for k, c in zip(keys, counts)}

    stats = PQStats()
    gt_matched, pred_matched = set(), set()
    for (g, p), n in inter.items():
        if g not in gt or p not in pred or gt[g].get("iscrowd", 0) == 1:
            continue
        if gt[g]["category_id"] != pred[p]["category_id"]:
            continue
        union = pred_area[p] + gt_area[g] - n - inter.get((VOID, p), 0)
        iou = n / union
        if iou > MATCH_IOU:
            s = stats[gt[g]["category_id"]]
            s.tp += 1
            s.iou += iou
            gt_matched.add(g)
            pred_matched.add(p)

    crowd_of = {}  # category -> its crowd segment (the reference keeps the last one listed)
    for g, seg in gt.items():
        if g in gt_matched:
            continue
        if seg.get("iscrowd", 0) == 1:
            crowd_of[seg["category_id"]] = g
            continue
        stats[seg["category_id"]].fn += 1
    for p, seg in pred.items():
        if p in pred_matched:
            continue
        ignored = inter.get((VOID, p), 0)
        if seg["category_id"] in crowd_of:
            ignored += inter.get((crowd_of[seg["category_id"]], p), 0)
        if ignored / pred_area[p] > MATCH_IOU:
            continue
        stats[seg["category_id"]].fp += 1
    return stats


def pq_compute(gt_json: str, pred_json: str, gt_folder: str | None = None,
               pred_folder: str | None = None) -> dict:
    """PQ of a COCO panoptic prediction file against a COCO panoptic ground-truth file.

    Args:
        gt_json, pred_json: ``panoptic_*.json`` files (``annotations`` with ``image_id``,
            ``file_name`` and ``segments_info``; the ground truth's ``categories`` with ``isthing``).
        gt_folder, pred_folder: their PNG folders (default: the JSON path without ``.json``).
    Returns:
        ``PQStats.summary``: ``All`` / ``Things`` / ``Stuff`` {pq, sq, rq, n} and ``per_class``.
    Raises:
        ValueError: an image without a prediction, or a map and its segments that disagree.
    """
    with open(gt_json, encoding="utf-8") as f:
        gt = json.load(f)
    with open(pred_json, encoding="utf-8") as f:
        pred = json.load(f)
    gt_folder = gt_folder or os.path.splitext(gt_json)[0]
    pred_folder = pred_folder or os.path.splitext(pred_json)[0]
    categories = {int(c["id"]): c for c in gt["categories"]}
    by_image = {a["image_id"]: a for a in pred["annotations"]}
    stats = PQStats()
    for ann in gt["annotations"]:
        p = by_image.get(ann["image_id"])
        if p is None:
            raise ValueError(f"{pred_json}: no prediction for image {ann['image_id']}")
        stats.add(pq_image(read_segment_png(os.path.join(gt_folder, ann["file_name"])), ann["segments_info"],
                           read_segment_png(os.path.join(pred_folder, p["file_name"])), p["segments_info"],
                           categories, image=str(ann["image_id"])))
    return stats.summary(categories)


class PanopticEvaluator:
    """PQ of a model's panoptic output (``Model``'s ``"panoptic"``: per image a segment-id map
    at the file's size and its segments) against a dataset's COCO panoptic ground truth.

    Args:
        dataset: a ``CocoDataset`` built with ``panoptic=``: ``panoptic_image(id)``,
            ``panoptic_categories()``, ``cat_ids`` (a thing segment's label → category id) and
            ``stuff_cat_ids`` (a stuff segment's label → category id).
    """

    def __init__(self, dataset):
        self.dataset = dataset
        self.categories = dataset.panoptic_categories()
        self.stats = PQStats()

    def _category(self, seg: dict) -> int:
        ids = self.dataset.cat_ids if seg["isthing"] else self.dataset.stuff_cat_ids
        return int(ids[seg["label"]])

    def process(self, batch, panoptic: list) -> None:
        """Score one batch's ``(segment ids Tensor[H, W], segments)`` pairs, images without
        panoptic ground truth left out."""
        for img_id, (ids, segments) in zip(batch.image_ids, panoptic):
            entry = self.dataset.panoptic_image(img_id)
            if entry is None:
                continue
            pred = [{"id": s["id"], "category_id": self._category(s)} for s in segments]
            self.stats.add(pq_image(read_segment_png(entry.png), entry.segments,
                                    ids.cpu().numpy().astype(np.int64), pred, self.categories,
                                    image=f"{img_id} ({os.path.basename(entry.png)})"))

    def evaluate(self) -> dict:
        """``PQ``, ``SQ``, ``RQ`` over all categories, ``_th`` over things, ``_st`` over stuff,
        and ``per_class_PQ`` ``{name: PQ}``; summed over every rank's images under torchrun."""
        import torch

        from .. import comm as dist
        cats = sorted(self.categories)
        table = torch.tensor([[self.stats[c].iou, self.stats[c].tp, self.stats[c].fp, self.stats[c].fn]
                              for c in cats], dtype=torch.float64).reshape(-1, 4)
        dist.all_reduce_sum(table)
        total = PQStats()
        for c, (iou, tp, fp, fn) in zip(cats, table.tolist()):
            total.per_category[c] = CategoryStats(iou, int(tp), int(fp), int(fn))
        summary = total.summary(self.categories)
        out = {}
        for group, suffix in (("All", ""), ("Things", "_th"), ("Stuff", "_st")):
            if summary[group]["n"]:
                out.update({f"{k.upper()}{suffix}": summary[group][k] for k in ("pq", "sq", "rq")})
        out["per_class_PQ"] = {self.categories[c].get("name", str(c)): v["pq"]
                               for c, v in summary["per_class"].items()}
        return out


def format_pq(stats: dict) -> str:
    """PQ / SQ / RQ (percent) for all, things and stuff, as a small text table."""
    lines = [f"{'':<7} {'PQ':>5} {'SQ':>5} {'RQ':>5}"]
    for name, suffix in (("All", ""), ("Things", "_th"), ("Stuff", "_st")):
        if f"PQ{suffix}" in stats:
            lines.append(f"{name:<7} " + " ".join(f"{100 * stats[k + suffix]:5.1f}" for k in ("PQ", "SQ", "RQ")))
    return "\n".join(lines)
