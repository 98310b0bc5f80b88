"""Dataset doctor: find every bad image and annotation in a COCO-format dataset.

``check_dataset`` reads the JSON itself (not through pycocotools, which stops at the first
problem) and returns one ``Problem`` per defect, naming the file, image id and annotation id.
``fix_dataset`` writes a cleaned copy (``--fix clip`` repairs what can be repaired and drops the
rest; ``--fix drop`` drops every bad item) and never touches the original.

The dataset loader (``coco.CocoDataset``) runs the same JSON checks (``check_annotations``) and
treats each kind as the sets below say: it refuses a file with a ``FATAL`` problem, and drops or
repairs the rest with a warning that counts each kind.
"""
from __future__ import annotations

import functools
import json
import math
import os
from dataclasses import dataclass
from typing import Iterable, Optional

from ..utils import write_json_atomic
from .io import DataError, read_image, read_image_size


@dataclass(frozen=True)
class Problem:
    file: str
    image_id: Optional[int]
    ann_id: Optional[int]
    kind: str  # short machine-readable code, e.g. "box_outside_image"
    detail: str
    index: Optional[int] = None  # position in the file's "annotations" list, for annotation problems


# Problems --fix clip can repair in place (everything else is dropped).
CLIPPABLE = {"box_outside_image", "size_mismatch"}
# What the loader cannot train or evaluate on: it refuses the file.
FATAL = {"missing_file", "unreadable_file", "bad_json", "missing_section", "no_images", "no_categories",
         "duplicate_image_id", "duplicate_category_id", "bad_image_entry", "bad_category",
         "unknown_category", "no_annotations"}
# Annotations the loader leaves out (the rest of the image is kept).
DROPPED = {"bad_annotation", "duplicate_annotation_id", "unknown_image", "bad_box", "nan_box", "empty_box",
           "box_wholly_outside"}
# Segmentations the loader replaces by the annotation's box (the object itself is kept).
SEGMENTATION = {"bad_polygon", "polygon_odd_coords", "polygon_too_few_points", "bad_rle",
                "rle_size_mismatch", "bad_segmentation"}


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_segmentation(segm, h: Optional[int], w: Optional[int]) -> Optional[tuple[str, str]]:
    if segm is None or segm == []:
        return None
    if isinstance(segm, list):
        for poly in segm:
            if not isinstance(poly, list) or not all(_is_num(v) for v in poly):
                return "bad_polygon", "polygon is not a list of numbers"
            if len(poly) % 2:
                return "polygon_odd_coords", f"polygon has an odd number of coordinates ({len(poly)})"
            if len(poly) < 6:
                return "polygon_too_few_points", f"polygon has {len(poly) // 2} points (< 3)"
            if not all(math.isfinite(v) for v in poly):
                return "bad_polygon", "polygon has NaN or infinite coordinates"
        return None
    if isinstance(segm, dict):
        size = segm.get("size")
        if not (isinstance(size, list) and len(size) == 2) or "counts" not in segm:
            return "bad_rle", "RLE needs 'size' [h, w] and 'counts'"
        if h is not None and w is not None and list(size) != [h, w]:
            return "rle_size_mismatch", f"RLE size {size} but image is [{h}, {w}]"
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in size):
            return "bad_rle", f"RLE size {size!r} is not two non-negative integers"
        counts = segm["counts"]
        if isinstance(counts, list) and not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in counts):
            return "bad_rle", "RLE counts are not all non-negative integers"
        if not isinstance(counts, (list, str)):
            return "bad_rle", f"RLE counts of type {type(counts).__name__} (a list or a string)"
        if isinstance(counts, str) and not _decodes(segm):
            return "bad_rle", "compressed RLE counts do not decode to the RLE's size"
        if isinstance(counts, list) and h is not None and w is not None and sum(counts) != h * w:
            return "rle_size_mismatch", f"RLE counts sum to {sum(counts)}, image has {h * w} pixels"
        return None
    return "bad_segmentation", f"segmentation of type {type(segm).__name__}"


def _decodes(rle: dict) -> bool:
    """Whether a compressed RLE (``counts`` a string) decodes to exactly ``size`` pixels."""
    from pycocotools import mask as mask_utils
    try:
        h, w = rle["size"]
        encoded = {"size": [h, w], "counts": rle["counts"].encode("ascii")}
        return int(mask_utils.area(encoded)) <= h * w and mask_utils.decode(encoded).shape == (h, w)
    except Exception:  # pycocotools' errors for malformed strings
        return False


def check_dataset(ann_file: str, image_dir: str, check_images: bool = True) -> list[Problem]:
    """Every problem in the dataset, in file order.

    Args:
        ann_file: COCO JSON.
        image_dir: folder of the images.
        check_images: decode each image to check it exists, is a whole image (a truncated file
            is found) and has the width/height the JSON claims.
    """
    data, problems = read_annotations(ann_file)
    if data is None:
        return problems
    problems += check_annotations(data, ann_file)
    if check_images:
        problems += check_image_files(data, ann_file, image_dir)
    return problems


def read_annotations(ann_file: str) -> tuple[Optional[dict], list[Problem]]:
    """(the parsed JSON object or None, the problems reading it)."""
    def fail(kind: str, detail: str) -> tuple[None, list[Problem]]:
        return None, [Problem(ann_file, None, None, kind, detail)]

    if not os.path.exists(ann_file):
        return fail("missing_file", "annotation file not found")
    if os.path.isdir(ann_file):
        return fail("unreadable_file", "is a folder, not an annotation file")
    try:
        with open(ann_file, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        return fail("unreadable_file", f"cannot read ({e.strerror or e})")
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        return fail("bad_json", f"not valid JSON: {e}")
    if not isinstance(data, dict):
        return fail("bad_json", "top level is not an object")
    return data, []


def check_annotations(data: dict, ann_file: str) -> list[Problem]:
    """The problems of a parsed COCO object (sections, ids, boxes, segmentations), in file order;
    image files are not opened (``check_image_files`` does that)."""
    problems: list[Problem] = []

    def add(kind: str, detail: str, image_id=None, ann_id=None, file=ann_file, index=None):
        problems.append(Problem(file, image_id, ann_id, kind, detail, index))

    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            add("missing_section", f"'{key}' missing or not a list")
    images = data.get("images") if isinstance(data.get("images"), list) else []
    anns = data.get("annotations") if isinstance(data.get("annotations"), list) else []
    cats = data.get("categories") if isinstance(data.get("categories"), list) else []
    if isinstance(data.get("images"), list) and not images:
        add("no_images", "'images' is empty")
    if isinstance(data.get("categories"), list) and not cats:
        add("no_categories", "'categories' is empty: there is no class to learn")

    cat_ids = set()
    for c in cats:
        if not isinstance(c, dict) or not _is_num(c.get("id")) or not isinstance(c.get("name"), str):
            add("bad_category", f"category without a numeric id and a name: {str(c)[:80]}")
            continue
        cid = c["id"]
        if cid in cat_ids:
            add("duplicate_category_id", f"category id {cid} declared twice")
        cat_ids.add(cid)

    sizes: dict[int, tuple[Optional[int], Optional[int]]] = {}
    for img in images:
        if not isinstance(img, dict) or "id" not in img:
            add("bad_image_entry", f"image entry without an id: {str(img)[:80]}")
            continue
        iid = img["id"]
        if iid in sizes:
            add("duplicate_image_id", "image id appears twice", image_id=iid)
            continue
        h, w = img.get("height"), img.get("width")
        sizes[iid] = (h if _is_num(h) else None, w if _is_num(w) else None)
        if not isinstance(img.get("file_name"), str):
            add("bad_image_entry", "image has no file_name", image_id=iid)

    ann_ids = set()
    usable = 0
    for index, ann in enumerate(anns):
        add_ann = functools.partial(add, index=index)  # the loader drops / repairs by position
        if not isinstance(ann, dict):
            add_ann("bad_annotation", f"annotation is not an object: {str(ann)[:80]}")
            continue
        aid, iid = ann.get("id"), ann.get("image_id")
        if aid in ann_ids:
            add_ann("duplicate_annotation_id", "annotation id appears twice", iid, aid)
            continue
        ann_ids.add(aid)
        if iid not in sizes:
            add_ann("unknown_image", f"annotation for image id {iid}, which is not in 'images'", iid, aid)
            continue
        if ann.get("category_id") not in cat_ids:
            add_ann("unknown_category", f"category_id {ann.get('category_id')} is not declared", iid, aid)
        h, w = sizes[iid]
        bbox = ann.get("bbox")
        good_box = False
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_num(v) for v in bbox)):
            add_ann("bad_box", f"bbox is not 4 numbers: {bbox!r}", iid, aid)
        elif not all(math.isfinite(v) for v in bbox):
            add_ann("nan_box", f"bbox has NaN or infinite values: {bbox}", iid, aid)
        elif bbox[2] <= 0 or bbox[3] <= 0:
            add_ann("empty_box", f"bbox has non-positive width or height: {bbox}", iid, aid)
        elif h is not None and w is not None and (
                bbox[0] >= w or bbox[1] >= h or bbox[0] + bbox[2] <= 0 or bbox[1] + bbox[3] <= 0):
            add_ann("box_wholly_outside", f"bbox {bbox} lies wholly outside the {w}x{h} image", iid, aid)
        elif h is not None and w is not None and (
                bbox[0] < 0 or bbox[1] < 0 or bbox[0] + bbox[2] > w + 1e-3 or bbox[1] + bbox[3] > h + 1e-3):
            add_ann("box_outside_image", f"bbox {bbox} leaves the {w}x{h} image", iid, aid)
            good_box = True
        else:
            good_box = True
        bad = _check_segmentation(ann.get("segmentation"), h, w)
        if bad:
            add_ann(bad[0], bad[1], iid, aid)
        usable += good_box and not ann.get("iscrowd", 0)
    if images and cats and not usable:
        add("no_annotations", "no usable (non-crowd, boxed) annotation in the whole file")
    return problems


def check_image_files(data: dict, ann_file: str, image_dir: str) -> list[Problem]:
    """Decode each image of ``data["images"]``: missing, unreadable or truncated files, and sizes
    that differ from the JSON's."""
    problems: list[Problem] = []
    seen = set()
    for img in data.get("images") if isinstance(data.get("images"), list) else []:
        if not isinstance(img, dict) or not isinstance(img.get("file_name"), str) or img.get("id") in seen:
            continue
        iid = img.get("id")
        seen.add(iid)
        path = os.path.join(image_dir, img["file_name"])
        if not os.path.isfile(path):
            problems.append(Problem(path, iid, None, "missing_image", "image file not found"))
            continue
        try:
            fh, fw = read_image(path).shape[:2]  # a whole decode: a truncated file fails here
        except DataError as e:
            problems.append(Problem(path, iid, None, "unreadable_image", str(e).split(": ", 1)[-1]))
            continue
        h, w = img.get("height"), img.get("width")
        if (h, w) != (fh, fw):
            problems.append(Problem(path, iid, None, "size_mismatch",
                                    f"JSON says {w}x{h}, file is {fw}x{fh}"))
    return problems


def format_table(problems: Iterable[Problem]) -> str:
    rows = [("file", "image_id", "ann_id", "problem", "detail")]
    rows += [(p.file, "-" if p.image_id is None else str(p.image_id),
              "-" if p.ann_id is None else str(p.ann_id), p.kind, p.detail) for p in problems]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(widths[i]) if i < 4 else c for i, c in enumerate(r)) for r in rows)


FIX_MARK = "detseg_fixed_from"


def written_by_fix(path: str) -> bool:
    """Whether ``path`` is a copy ``fix_dataset`` wrote (its ``info`` carries ``FIX_MARK``)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and isinstance(data.get("info"), dict) and FIX_MARK in data["info"]


def fixed_path(ann_file: str, mode: str) -> str:
    root, ext = os.path.splitext(ann_file)
    return f"{root}.fixed-{mode}{ext or '.json'}"


def _clip_box(bbox: list, h: int, w: int) -> Optional[list]:
    x0, y0 = max(0.0, bbox[0]), max(0.0, bbox[1])
    x1, y1 = min(float(w), bbox[0] + bbox[2]), min(float(h), bbox[1] + bbox[3])
    return [x0, y0, x1 - x0, y1 - y0] if x1 > x0 and y1 > y0 else None


def fix_dataset(ann_file: str, image_dir: str, mode: str, out_file: Optional[str] = None) -> tuple[str, dict]:
    """Write a cleaned copy of ``ann_file``.

    Args:
        mode: ``"clip"`` clips boxes into the image and takes the file's real size where the
            JSON is wrong, dropping what can't be repaired; ``"drop"`` drops every bad item.

    Returns:
        (path written, counts {"clipped", "dropped_annotations", "dropped_images"}).
    """
    if mode not in ("clip", "drop"):
        raise ValueError(f"fix mode must be 'clip' or 'drop', got {mode!r}")
    problems = check_dataset(ann_file, image_dir)
    if any(p.kind in ("bad_json", "missing_file") for p in problems):
        raise DataError(f"{ann_file}: cannot be fixed automatically: {problems[0].detail}")
    with open(ann_file, encoding="utf-8") as f:
        data = json.load(f)

    bad_images: set = set()
    resize: dict = {}
    bad_anns: set = set()
    clip_anns: set = set()
    for p in problems:
        if p.ann_id is None and p.image_id is not None:
            if p.kind == "size_mismatch" and mode == "clip":
                resize[p.image_id] = True
            elif p.kind != "duplicate_image_id":
                bad_images.add(p.image_id)
        elif p.ann_id is not None:
            if p.kind == "box_outside_image" and mode == "clip":
                clip_anns.add(p.ann_id)
            elif p.kind != "duplicate_annotation_id":
                bad_anns.add(p.ann_id)
    counts = {"clipped": 0, "dropped_annotations": 0, "dropped_images": 0}

    seen_img, images = set(), []
    for img in data.get("images", []):
        iid = img.get("id") if isinstance(img, dict) else None
        if iid is None or iid in seen_img or iid in bad_images:
            counts["dropped_images"] += 1
            continue
        seen_img.add(iid)
        if iid in resize:
            fh, fw = read_image_size(os.path.join(image_dir, img["file_name"]))
            img = {**img, "height": fh, "width": fw}
            counts["clipped"] += 1
        images.append(img)
    sizes = {img["id"]: (img["height"], img["width"]) for img in images}
    cat_ids = {c["id"] for c in data.get("categories", []) if isinstance(c, dict)}

    seen_ann, anns = set(), []
    for ann in data.get("annotations", []):
        aid = ann.get("id") if isinstance(ann, dict) else None
        keep = (aid is not None and aid not in seen_ann and aid not in bad_anns
                and ann.get("image_id") in sizes and ann.get("category_id") in cat_ids)
        if keep and aid in clip_anns:
            h, w = sizes[ann["image_id"]]
            box = _clip_box(ann["bbox"], h, w)
            if box is None:
                keep = False
            else:
                ann = {**ann, "bbox": box}
                counts["clipped"] += 1
        if not keep:
            counts["dropped_annotations"] += 1
            continue
        seen_ann.add(aid)
        anns.append(ann)

    info = data.get("info") if isinstance(data.get("info"), dict) else {}
    # the mark that lets a later --fix replace this copy (and nothing else) at its path
    out = {**data, "info": {**info, FIX_MARK: os.path.basename(ann_file)}, "images": images,
           "annotations": anns}
    out_file = out_file or fixed_path(ann_file, mode)
    write_json_atomic(out, out_file)
    return out_file, counts
