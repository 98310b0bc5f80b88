"""The COCO panoptic format: reading it, checking it, and turning one image's segments into the
targets the heads train on.

A COCO panoptic dataset is a JSON file (``images``, ``annotations`` with one entry per image:
``image_id``, ``file_name`` of its PNG and ``segments_info``, and ``categories`` with ``isthing``)
and a folder of PNGs whose pixels hold segment ids (``R + 256 G + 256^2 B``, 0 = void).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from ..evaluation.panoptic_quality import VOID, read_segment_png


@dataclass
class PanopticImage:
    """One image's panoptic ground truth: its entry and where its files are."""

    image_id: int
    file_name: str        # the photo, under the image folder
    png: str              # the segment-id PNG, full path
    height: int
    width: int
    segments: list[dict]  # segments_info entries: id, category_id, iscrowd, area, bbox


@dataclass
class PanopticDataset:
    """A COCO panoptic JSON read in: categories (id → entry with ``isthing``) and images."""

    path: str
    categories: dict[int, dict]
    images: list[PanopticImage]

    @property
    def thing_ids(self) -> list[int]:
        return [c for c, info in self.categories.items() if info.get("isthing", 0) == 1]

    @property
    def stuff_ids(self) -> list[int]:
        return [c for c, info in self.categories.items() if info.get("isthing", 0) != 1]


def default_png_folder(json_path: str) -> str:
    """COCO's convention: ``annotations/panoptic_val2017.json`` ↔ ``annotations/panoptic_val2017/``."""
    return os.path.splitext(json_path)[0]


def load_panoptic(json_path: str, png_folder: str | None = None) -> PanopticDataset:
    """Read a COCO panoptic JSON file; a malformed one is a ValueError naming the file and item."""
    png_folder = png_folder or default_png_folder(json_path)
    try:
        with open(json_path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        raise ValueError(f"{json_path}: cannot read ({e.strerror or e})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{json_path}: not JSON ({e.msg}, line {e.lineno})") from None
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"{json_path}: '{key}' must be a list (a COCO panoptic file has images, "
                             f"annotations and categories)")
    try:
        categories = {int(c["id"]): c for c in data["categories"]}
        images = {int(im["id"]): im for im in data["images"]}
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{json_path}: a category or image without a valid id ({e!r})") from None
    out = []
    for i, ann in enumerate(data["annotations"]):
        try:
            image = images[int(ann["image_id"])]
            segments = [dict(s, id=int(s["id"]), category_id=int(s["category_id"]))
                        for s in ann["segments_info"]]
            out.append(PanopticImage(int(ann["image_id"]), image["file_name"],
                                     os.path.join(png_folder, ann["file_name"]),
                                     int(image["height"]), int(image["width"]), segments))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{json_path}: annotations[{i}] is not a panoptic entry with image_id, "
                             f"file_name and segments_info of a listed image ({e!r})") from None
    return PanopticDataset(json_path, categories, out)


def check_image(entry: PanopticImage, categories: dict[int, dict], ids: np.ndarray | None = None) -> list[str]:
    """What is wrong with one image's panoptic ground truth, one line each (empty: nothing).

    Checks the PNG's size against the image's, ids in the PNG missing from ``segments_info`` and
    back, unknown category ids, repeated segment ids, and segments whose stated area is not the
    PNG's pixel count (an empty segment has area 0 in a PNG that lacks it).
    """
    where = f"image {entry.image_id} ({os.path.basename(entry.png)})"
    if ids is None:
        try:
            ids = read_segment_png(entry.png)
        except ValueError as e:
            return [f"{where}: {e}"]
    problems = []
    if ids.shape != (entry.height, entry.width):
        problems.append(f"{where}: PNG is {ids.shape[1]}x{ids.shape[0]}, the image {entry.width}x{entry.height}")
    labels, counts = np.unique(ids, return_counts=True)
    area = {int(k): int(c) for k, c in zip(labels, counts) if k != VOID}
    listed = [s["id"] for s in entry.segments]
    if len(set(listed)) != len(listed):
        problems.append(f"{where}: segment ids listed twice in segments_info")
    if sorted(set(area) - set(listed)):
        problems.append(f"{where}: PNG ids {sorted(set(area) - set(listed))} not in segments_info")
    for s in entry.segments:
        if s["category_id"] not in categories:
            problems.append(f"{where}: segment {s['id']} has unknown category_id {s['category_id']}")
        if s["id"] not in area:
            problems.append(f"{where}: segment {s['id']} is in segments_info but has no pixels in the PNG")
        elif "area" in s and int(s["area"]) != area[s["id"]]:
            problems.append(f"{where}: segment {s['id']} states area {s['area']}, the PNG has {area[s['id']]}")
    return problems


def targets_from_segments(ids: np.ndarray, segments: list[dict], categories: dict[int, dict],
                          contiguous: dict[int, int]) -> dict:
    """One image's training targets from its segment-id map.

    Args:
        ids: ``[H, W]`` segment ids (0 = void).
        segments: the image's ``segments_info``.
        categories: category id → entry with ``isthing``.
        contiguous: category id → training label ``0..K-1`` (things and stuff alike).
    Returns:
        ``semantic`` uint8 ``[H, W]`` (label + 1, 0 = void, 255 = crowd: left out of the loss),
        ``masks`` uint8 ``[N, H, W]``, ``labels`` int64 ``[N]`` and ``boxes`` float32 ``[N, 4]``
        (x0, y0, x1, y1) of the non-crowd thing segments, ``ignore_boxes`` ``[M, 4]`` of the crowd ones.
    """
    h, w = ids.shape
    semantic = np.zeros((h, w), np.uint8)
    masks, labels, boxes, ignore = [], [], [], []
    for s in segments:
        m = ids == s["id"]
        if not m.any():
            continue
        crowd = s.get("iscrowd", 0) == 1
        semantic[m] = 255 if crowd else contiguous[s["category_id"]] + 1
        if categories[s["category_id"]].get("isthing", 0) != 1:
            continue
        ys, xs = np.nonzero(m)
        box = [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]
        if crowd:
            ignore.append(box)
            continue
        masks.append(m.astype(np.uint8))
        labels.append(contiguous[s["category_id"]])
        boxes.append(box)
    return {"semantic": semantic,
            "masks": np.stack(masks) if masks else np.zeros((0, h, w), np.uint8),
            "labels": np.asarray(labels, np.int64),
            "boxes": np.asarray(boxes, np.float32).reshape(-1, 4),
            "ignore_boxes": np.asarray(ignore, np.float32).reshape(-1, 4)}
