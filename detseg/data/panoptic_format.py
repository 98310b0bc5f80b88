"""The COCO panoptic format: reading it and checking it (``CocoDataset`` turns an image's segments
into training targets).

A COCO panoptic dataset is a JSON file (``images``, ``annotations`` with one entry per image:
``image_id``, ``file_name`` of its PNG and ``segments_info``, and ``categories`` with ``isthing``)
and a folder of PNGs whose pixels hold segment ids (``R + 256 G + 256^2 B``, 0 = void).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from .validate import Problem

VOID = 0  # the id of unlabelled pixels


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    """``[H, W, 3]`` uint8 RGB of a COCO panoptic PNG → ``[H, W]`` int64 segment ids."""
    rgb = np.asarray(rgb).astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def id_to_rgb(ids: np.ndarray) -> np.ndarray:
    """``[H, W]`` segment ids (below 256^3) → ``[H, W, 3]`` uint8 RGB for a COCO panoptic PNG."""
    ids = np.asarray(ids).astype(np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= 256 ** 3):
        raise ValueError("segment ids must lie in [0, 256^3) to be stored in a COCO panoptic PNG")
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)


def segment_areas(ids: np.ndarray) -> dict[int, int]:
    """Pixels per segment id of a ``[H, W]`` map, void left out."""
    labels, counts = np.unique(ids, return_counts=True)
    return {int(k): int(c) for k, c in zip(labels, counts) if k != VOID}


def mask_bbox(mask: np.ndarray) -> list[int]:
    """COCO ``[x, y, w, h]`` (integer pixels) enclosing a ``[H, W]`` mask's pixels; zeros when it
    has none."""
    ys, xs = np.nonzero(mask)
    if not len(xs):
        return [0, 0, 0, 0]
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]


def read_segment_png(path: str) -> np.ndarray:
    """A COCO panoptic PNG's ``[H, W]`` segment ids (a clear error for a missing or bad file)."""
    import cv2
    bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"{path}: missing or not a readable PNG")
    return rgb_to_id(bgr[..., ::-1])


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


def panoptic_paths(json_path: str, png_folder: str | None = None) -> dict:
    """A split's panoptic entries: ``{"panoptic_json", "panoptic_dir"}`` (the folder by COCO's
    convention when not given)."""
    return {"panoptic_json": json_path, "panoptic_dir": png_folder or default_png_folder(json_path)}


def is_panoptic_file(path: str) -> bool:
    """Whether ``path`` reads as a COCO panoptic JSON (its annotations carry ``segments_info``)."""
    try:
        with open(path, encoding="utf-8") as f:
            anns = json.load(f).get("annotations")
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(anns, list) and bool(anns) and isinstance(anns[0], dict) and "segments_info" in anns[0]


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


def check_image(entry: PanopticImage, categories: dict[int, dict], ids: np.ndarray | None = None) -> list[Problem]:
    """What is wrong with one image's panoptic ground truth (empty: nothing), in the dataset
    doctor's rows: the PNG's size against the image's, ids in the PNG missing from
    ``segments_info`` and back, unknown category ids, repeated segment ids, and stated areas
    that are not the PNG's pixel counts. ``ann_id`` holds the segment id."""
    png = os.path.basename(entry.png)

    def problem(kind: str, detail: str, seg_id: int | None = None) -> Problem:
        return Problem(png, entry.image_id, seg_id, kind, detail)

    if ids is None:
        try:
            ids = read_segment_png(entry.png)
        except ValueError as e:
            return [problem("unreadable_png", str(e))]
    problems = []
    if ids.shape != (entry.height, entry.width):
        problems.append(problem("png_size_mismatch", f"PNG is {ids.shape[1]}x{ids.shape[0]}, the image "
                                                     f"{entry.width}x{entry.height}"))
    area = segment_areas(ids)
    listed = [s["id"] for s in entry.segments]
    for seg_id in sorted({i for i in listed if listed.count(i) > 1}):
        problems.append(problem("duplicate_segment_id", "listed more than once in segments_info", seg_id))
    for seg_id in sorted(set(area) - set(listed)):
        problems.append(problem("id_not_listed", f"PNG id {seg_id} ({area[seg_id]} px) is not in "
                                                 f"segments_info", seg_id))
    for s in entry.segments:
        if s["category_id"] not in categories:
            problems.append(problem("unknown_category", f"unknown category_id {s['category_id']}", s["id"]))
        if s["id"] not in area:
            problems.append(problem("empty_segment", "in segments_info but has no pixels in the PNG", s["id"]))
        elif "area" in s and int(s["area"]) != area[s["id"]]:
            problems.append(problem("area_mismatch", f"states area {s['area']}, the PNG has "
                                                     f"{area[s['id']]} px", s["id"]))
    return problems


def check_panoptic(json_path: str, image_dir: str, png_folder: str | None = None) -> tuple[list[Problem], dict]:
    """The dataset doctor on a COCO panoptic dataset: every image's problems (``check_image``,
    plus a missing photo), and the segments per category name (things and stuff)."""
    try:
        data = load_panoptic(json_path, png_folder)
    except ValueError as e:
        return [Problem(os.path.basename(json_path), None, None, "bad_json", str(e))], {}
    problems, counts = [], {}
    for entry in data.images:
        if not os.path.isfile(os.path.join(image_dir, entry.file_name)):
            problems.append(Problem(entry.file_name, entry.image_id, None, "missing_file",
                                    f"not in {image_dir}"))
        problems += check_image(entry, data.categories)
        for s in entry.segments:
            info = data.categories.get(s["category_id"])
            if info is not None:
                kind = "thing" if info.get("isthing", 0) == 1 else "stuff"
                key = f"{info.get('name', s['category_id'])} ({kind})"
                counts[key] = counts.get(key, 0) + 1
    return problems, counts
