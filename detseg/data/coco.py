"""COCO-format dataset on pycocotools.

Category ids of any values are mapped to contiguous labels ``0..K-1`` (sorted by id) and back;
boxes become float32 ``(x1, y1, x2, y2)``; crowd annotations become ignore regions, never
positives; images with no annotations stay as negatives unless ``keep_empty=False``. Masks are
decoded (polygons and RLE alike) only when asked for, and a semantic target (0 background, k+1
for class k, 255 ignore) is derived from them for FCN.

With COCO panoptic ground truth beside the instances file (``panoptic=``), the semantic target
is the panoptic one instead, as Panoptic FPN trains its semantic branch: 0 for every thing pixel,
k+1 for stuff class k (the panoptic file's stuff categories, sorted by id), 255 for void.
"""
from __future__ import annotations

import contextlib
import io as _io
import logging
import math
import os
from typing import Callable, Optional

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from ..structures import SEMANTIC_IGNORE as IGNORE
from .io import DataError, read_image_size, read_or_skip
from .panoptic_format import PanopticImage, load_panoptic, read_segment_png
from .validate import DROPPED, FATAL, SEGMENTATION, check_annotations, read_annotations

logger = logging.getLogger(__name__)


def load_coco(ann_file: str, image_dir: Optional[str] = None) -> COCO:
    """Open a COCO annotation file after the dataset doctor's checks (``validate``).

    A file that cannot be trained or evaluated on (no categories, no images, duplicate ids, no
    usable annotation, ...) is refused with a ``DataError`` naming the first problem. Annotations
    with bad boxes or of unknown images are dropped, bad segmentations replaced by the box, and
    boxes leaving their image clipped (when loaded), each kind logged once with a count and the
    first ids.
    """
    return coco_from(COCO, read_cleaned(ann_file, image_dir), ann_file, image_dir)


def read_cleaned(ann_file: str, image_dir: Optional[str] = None) -> dict:
    """The annotation file's JSON after the dataset doctor's checks, cleaned as ``load_coco``
    describes (what both training and evaluation read, so that pycocotools never sees an
    annotation it would crash on).

    Raises:
        DataError: the file cannot be used at all (the first such problem named).
    """
    data, problems = read_annotations(ann_file)
    if data is None:
        raise DataError(f"{ann_file}: {problems[0].detail}")
    problems = check_annotations(data, ann_file)
    if image_dir is not None and _take_file_sizes(data, problems, ann_file, image_dir):
        problems = check_annotations(data, ann_file)
    fatal = [p for p in problems if p.kind in FATAL]
    if fatal:
        p = fatal[0]
        where = "".join(f" {k} {v}" for k, v in (("image", p.image_id), ("annotation", p.ann_id))
                        if v is not None)
        more = f" (and {len(fatal) - 1} more problem(s) of this severity)" if len(fatal) > 1 else ""
        raise DataError(f"{ann_file}:{where}: {p.detail}{more}; cannot use this file "
                        f"({_hint(ann_file, image_dir)})")
    return _cleaned(data, problems, ann_file, _hint(ann_file, image_dir))


def _take_file_sizes(data: dict, problems: list, ann_file: str, image_dir: str) -> bool:
    """Where boxes leave their image, check the image file's real size (header only) against the
    JSON's ``width`` / ``height``; where they disagree, name the image once with both sizes and
    take the file's (the loader decodes the file, so its size is the truth). Returns whether any
    size changed (the caller checks the annotations again)."""
    suspects = {p.image_id for p in problems if p.kind in ("box_outside_image", "box_wholly_outside")}
    changed = False
    for img in data.get("images", []):
        if not (isinstance(img, dict) and img.get("id") in suspects and isinstance(img.get("file_name"), str)):
            continue
        try:
            h, w = read_image_size(os.path.join(image_dir, img["file_name"]))
        except DataError:
            continue  # reported when the image is read
        if (img.get("height"), img.get("width")) != (h, w):
            _name_wrong_size(ann_file, img, h, w)
            img["height"], img["width"] = h, w
            changed = True
    return changed


def _name_wrong_size(ann_file: str, img: dict, h: int, w: int) -> None:
    """One warning: image ``img``'s JSON size is not its file's (``h`` x ``w``), which is used."""
    logger.warning("%s: image %s (%s): the annotation file says %sx%s (width x height), the file is "
                   "%dx%d; using the file's size", ann_file, img.get("id"), img.get("file_name"),
                   img.get("width"), img.get("height"), w, h)


def _hint(ann_file: str, image_dir: Optional[str]) -> str:
    return f"tools/check_data.py {ann_file} {image_dir or 'IMAGE_DIR'} lists every problem"


def coco_from(api: type, data: dict, ann_file: str, image_dir: Optional[str] = None):
    """An ``api`` object (pycocotools' or faster-coco-eval's ``COCO``) over cleaned ``data``."""
    try:
        with contextlib.redirect_stdout(_io.StringIO()):
            coco = api()
            coco.dataset = data
            coco.createIndex()
    except (KeyError, TypeError, AssertionError) as e:
        raise DataError(f"{ann_file}: not a COCO annotation file ({type(e).__name__}: {e}); "
                        f"{_hint(ann_file, image_dir)}") from None
    return coco


def _cleaned(data: dict, problems: list, ann_file: str, hint: str) -> dict:
    """``data`` without the annotations ``DROPPED`` names, bad segmentations emptied (the box
    then serves as the mask); one warning per kind of problem."""
    by_kind: dict[str, list] = {}
    for p in problems:
        by_kind.setdefault(p.kind, []).append(p)
    for kind, found in by_kind.items():
        action = ("dropped" if kind in DROPPED else "replaced the segmentation by the box for" if kind in
                  SEGMENTATION else "clipped to their image" if kind == "box_outside_image" else "noted")
        ids = ", ".join(f"{p.ann_id}" for p in found[:3])
        logger.warning("%s: %s %d annotation(s) with %s: %s (annotation ids %s%s); %s", ann_file, action,
                       len(found), kind.replace("_", " "), found[0].detail, ids,
                       ", ..." if len(found) > 3 else "", hint)
    drop = {p.index for p in problems if p.kind in DROPPED}
    blank = {p.index for p in problems if p.kind in SEGMENTATION}
    if not drop and not blank:
        return data
    anns = [dict(a, segmentation=[]) if i in blank else a
            for i, a in enumerate(data["annotations"]) if i not in drop]
    return {**data, "annotations": anns}


def _valid_bbox(bbox) -> bool:
    return (isinstance(bbox, (list, tuple)) and len(bbox) == 4
            and all(isinstance(v, (int, float)) and math.isfinite(v) for v in bbox)
            and bbox[2] > 0 and bbox[3] > 0)


def decode_segmentation(segm, height: int, width: int) -> np.ndarray:
    """Polygon list, uncompressed RLE or compressed RLE → ``np.ndarray[H, W]`` uint8 mask."""
    if isinstance(segm, list):
        polys = [p for p in segm if len(p) >= 6]
        if not polys:
            return np.zeros((height, width), dtype=np.uint8)
        rle = mask_utils.merge(mask_utils.frPyObjects(polys, height, width))
    elif isinstance(segm.get("counts"), list):
        rle = mask_utils.frPyObjects(segm, height, width)
    else:
        rle = segm
    return np.ascontiguousarray(mask_utils.decode(rle), dtype=np.uint8)


def semantic_from_instances(masks: np.ndarray, labels: np.ndarray,
                            ignore_mask: Optional[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Semantic map from instance masks.

    Args:
        masks: uint8 ``[N, H, W]``; labels: int ``[N]`` in 0..K-1; ignore_mask: ``[H, W]`` or None.

    Returns:
        uint8 ``[H, W]``: 0 background, k+1 for class k, 255 where only a crowd region is.
        Larger instances are painted first so a small object on top of a big one stays visible.
    """
    sem = np.zeros(shape, dtype=np.uint8)
    if len(masks):
        order = np.argsort(-masks.reshape(len(masks), -1).sum(1), kind="stable")
        for i in order:
            sem[masks[i] > 0] = labels[i] + 1
    if ignore_mask is not None:
        sem[(ignore_mask > 0) & (sem == 0)] = IGNORE
    return sem


class CocoDataset(torch.utils.data.Dataset):
    """A COCO-format detection / segmentation dataset.

    Args:
        ann_file: COCO instances JSON.
        image_dir: folder the images' ``file_name`` are relative to.
        with_masks: decode instance masks (needed by mask and FCN heads).
        with_semantic: derive the semantic map (implies decoding masks).
        keep_empty: keep images without (non-crowd) annotations as negatives.
        transform: callable on the sample dict (see ``detseg.data.transforms``).
        on_bad_image: ``"error"`` raises ``DataError``; ``"skip"`` logs it, counts it and
            returns None for that index (the collate function drops it).
        proposals: ``{image_id: np.ndarray[P, 4]}`` precomputed proposals in the files' pixels
            (``tools/proposals.py``); each item then carries ``proposals``, transformed with it.
        cache: keep each image and its decoded annotations in memory after the first read, so
            later epochs skip the file decode and the polygon rasterising (the transform still
            runs on every read, on a copy). Costs the decoded size of the dataset (0.64 GB
            for the 2000-image shapes set with masks), once per loader worker.
        panoptic: ``(panoptic JSON, PNG folder or None)``: COCO panoptic ground truth of the same
            images; the semantic target then holds the stuff classes (see the module docstring),
            ``stuff_names`` / ``stuff_cat_ids`` name them and ``panoptic_image(id)`` gives an
            image's ground truth for PQ.
        copy_paste: ``detseg.data.copy_paste.CopyPaste`` settings (prob, max_objects, rarity,
            scale, min_visible): objects of other images pasted in before ``transform`` (masks
            are decoded for it even when the items do not carry them).

    Each item is a dict: ``image`` uint8 ``[3, H, W]``, ``boxes`` float32 ``[N, 4]`` xyxy,
    ``labels`` int64 ``[N]``, ``ignore_boxes`` float32 ``[M, 4]``, ``image_id``, ``orig_size``
    (H, W) of the file, and when asked ``masks`` uint8 ``[N, H, W]``, ``semantic`` uint8 ``[H, W]``.
    """

    def __init__(self, ann_file: str, image_dir: str, *, with_masks: bool = False,
                 with_semantic: bool = False, keep_empty: bool = True,
                 transform: Optional[Callable[[dict], dict]] = None,
                 on_bad_image: str = "error", proposals: Optional[dict] = None, cache: bool = False,
                 panoptic: Optional[tuple[str, Optional[str]]] = None, copy_paste: Optional[dict] = None):
        self.ann_file = ann_file
        self.image_dir = image_dir
        self.coco = load_coco(ann_file, image_dir)
        self._size_named: set = set()  # images whose JSON size was found wrong (named once)
        self.with_semantic = with_semantic
        self.with_masks = with_masks or with_semantic
        self.transform = transform
        if on_bad_image not in ("error", "skip"):
            raise ValueError(f"on_bad_image must be 'error' or 'skip', got {on_bad_image!r}")
        self.on_bad_image = on_bad_image
        self.skipped: list[str] = []
        self.proposals = proposals
        self.cache: Optional[dict] = {} if cache else None

        self.cat_ids = sorted(self.coco.getCatIds())
        self.label_of_cat = {cid: i for i, cid in enumerate(self.cat_ids)}
        self.class_names = [self.coco.cats[cid]["name"] for cid in self.cat_ids]
        self._init_panoptic(panoptic)

        # (load_coco refused undeclared categories and dropped unusable boxes, with a warning)
        ids = []
        for img_id in sorted(self.coco.getImgIds()):
            anns = self.coco.imgToAnns.get(img_id, [])
            has_pos = any(not ann.get("iscrowd", 0) and _valid_bbox(ann.get("bbox")) for ann in anns)
            if has_pos or keep_empty:
                ids.append(img_id)
        self.ids = ids
        self.copy_paste = None  # after self.ids: it indexes the training instances
        if copy_paste and copy_paste.get("prob", 0) > 0:
            if self.panoptic is not None:
                raise ValueError("copy-paste would need the panoptic stuff map edited too; set "
                                 "data.copy_paste.prob to 0 for panoptic data")
            from .copy_paste import CopyPaste
            self.copy_paste = CopyPaste(self, **copy_paste)

    def _init_panoptic(self, panoptic: Optional[tuple[str, Optional[str]]]) -> None:
        self.panoptic = None
        self.stuff_cat_ids: list[int] = []
        self.stuff_names: list[str] = []
        self._panoptic_of: dict[int, PanopticImage] = {}
        if panoptic is None:
            return
        try:
            self.panoptic = load_panoptic(*panoptic)
        except ValueError as e:
            raise DataError(str(e)) from None
        self.stuff_cat_ids = sorted(self.panoptic.stuff_ids)
        self.stuff_names = [self.panoptic.categories[c].get("name", str(c)) for c in self.stuff_cat_ids]
        self._stuff_label = {c: k for k, c in enumerate(self.stuff_cat_ids)}
        self._panoptic_of = {im.image_id: im for im in self.panoptic.images}
        missing = [i for i in self.coco.getImgIds() if i not in self._panoptic_of]
        if missing:
            logger.warning("%s: %d image(s) of %s have no panoptic entry (image ids %s); their "
                           "semantic targets are left out of the loss and of PQ", panoptic[0], len(missing),
                           self.ann_file, ", ".join(map(str, missing[:5])))

    # -- label map -------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.cat_ids)

    @property
    def num_stuff(self) -> Optional[int]:
        """Stuff classes of the panoptic ground truth (None without one)."""
        return len(self.stuff_cat_ids) if self.panoptic is not None else None

    @property
    def semantic_names(self) -> list[str]:
        """Names of the semantic target's values 0, 1, ...: background and the classes, or with
        panoptic ground truth "things" and the stuff classes."""
        if self.panoptic is not None:
            return ["things", *self.stuff_names]
        return ["background", *self.class_names]

    def label_map(self) -> dict:
        """Checkpoint-safe description: contiguous label → dataset category id, and names (and
        the stuff classes' with panoptic ground truth)."""
        out = {"cat_ids": list(self.cat_ids), "class_names": list(self.class_names)}
        if self.panoptic is not None:
            out.update(stuff_cat_ids=list(self.stuff_cat_ids), stuff_names=list(self.stuff_names))
        return out

    def panoptic_image(self, img_id: int) -> Optional[PanopticImage]:
        """The panoptic ground truth of image ``img_id`` (None: no panoptic file, or no entry)."""
        return self._panoptic_of.get(img_id)

    def panoptic_categories(self) -> dict[int, dict]:
        """``{category id: {"name", "isthing"}}`` of the panoptic ground truth ({} without one)."""
        return dict(self.panoptic.categories) if self.panoptic is not None else {}

    def stuff_map(self, img_id: int, height: int, width: int) -> np.ndarray:
        """uint8 ``[H, W]`` of image ``img_id`` for transport through the transforms: 0 void (and
        images without a panoptic entry), 1 things, k + 2 stuff class k."""
        entry = self._panoptic_of.get(img_id)
        out = np.zeros((height, width), np.uint8)
        if entry is None:
            return out
        try:
            ids = read_segment_png(entry.png)
        except ValueError as e:
            raise DataError(f"{self.panoptic.path}: image {img_id}: {e}") from None
        if ids.shape != (height, width):
            raise DataError(f"{entry.png}: PNG is {ids.shape[1]}x{ids.shape[0]}, its image {img_id} "
                            f"{width}x{height}; run tools/check_data.py")
        for seg in entry.segments:
            cat = seg["category_id"]
            value = 1 if cat not in self._stuff_label else self._stuff_label[cat] + 2
            out[ids == seg["id"]] = value
        return out

    def __len__(self) -> int:
        return len(self.ids)

    def image_labels(self) -> list[list[int]]:
        """Per image, the category ids of its non-crowd annotations (what the samplers count)."""
        return [[a["category_id"] for a in self.coco.imgToAnns.get(i, []) if not a.get("iscrowd")]
                for i in self.ids]

    def class_counts(self) -> list[int]:
        """Images holding each class (label order), crowd regions left out."""
        return self._label_counts(per_image=True)

    def instance_counts(self) -> list[int]:
        """Annotated instances of each class (label order), crowd regions left out: what a
        region or window classifier's class weights count."""
        return self._label_counts(per_image=False)

    def _label_counts(self, per_image: bool) -> list[int]:
        """Per class (label order): the images holding it (``per_image``) or its instances."""
        counts = [0] * self.num_classes
        for labels in self.image_labels():
            for cat in (set(labels) if per_image else labels):
                counts[self.label_of_cat[cat]] += 1
        return counts

    def instance_refs(self) -> list[list[tuple[int, int]]]:
        """Per class (label order), every usable training instance (not crowd, with a box
        ``load_annotations`` keeps) as (image id, index in the image's annotations)."""
        refs: list[list[tuple[int, int]]] = [[] for _ in range(self.num_classes)]
        for img_id in self.ids:
            for j, ann in enumerate(self.coco.imgToAnns.get(img_id, [])):
                if not ann.get("iscrowd") and _valid_bbox(ann.get("bbox")):
                    refs[self.label_of_cat[ann["category_id"]]].append((img_id, j))
        return refs

    def pixel_counts(self) -> list[int]:
        """Annotated pixels per class from the annotations' areas, background first (every
        image's pixels less its objects'): the class frequencies of a semantic map, counted from
        the JSON without decoding a mask (overlaps counted twice). With panoptic ground truth:
        the panoptic semantic target's classes, things first, from the segments' areas."""
        if self.panoptic is not None:
            counts = [0] * (len(self.stuff_cat_ids) + 1)
            for img_id in self.ids:
                entry = self._panoptic_of.get(img_id)
                for seg in entry.segments if entry is not None else ():
                    k = self._stuff_label.get(seg["category_id"])
                    counts[0 if k is None else k + 1] += int(seg.get("area", 0))
            return counts
        counts = [0] * (self.num_classes + 1)
        for img_id in self.ids:
            img = self.coco.imgs[img_id]
            objects = 0
            for a in self.coco.imgToAnns.get(img_id, []):
                if not a.get("iscrowd") and a["category_id"] in self.label_of_cat:
                    counts[self.label_of_cat[a["category_id"]] + 1] += int(a.get("area", 0))
                    objects += int(a.get("area", 0))
            counts[0] += max(0, int(img.get("height", 0)) * int(img.get("width", 0)) - objects)
        return counts

    # -- loading ---------------------------------------------------------------------------
    def image_path(self, img_id: int) -> str:
        return os.path.join(self.image_dir, self.coco.imgs[img_id]["file_name"])

    def load_annotations(self, img_id: int, height: int, width: int) -> dict:
        """Annotations of one image as numpy arrays (see class docstring for the keys)."""
        boxes, labels, ignore_boxes, segms, crowd_segms = [], [], [], [], []
        for ann in self.coco.imgToAnns.get(img_id, []):
            bbox = ann.get("bbox")
            if not _valid_bbox(bbox):
                continue
            x, y, w, h = (float(v) for v in bbox)
            box = [max(0.0, x), max(0.0, y), min(float(width), x + w), min(float(height), y + h)]
            if box[2] <= box[0] or box[3] <= box[1]:
                continue  # wholly outside the image
            if ann.get("iscrowd", 0):
                ignore_boxes.append(box)
                crowd_segms.append(ann.get("segmentation"))
            else:
                boxes.append(box)
                labels.append(self.label_of_cat[ann["category_id"]])
                segms.append(ann.get("segmentation"))
        out = {
            "boxes": np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
            "labels": np.asarray(labels, dtype=np.int64),
            "ignore_boxes": np.asarray(ignore_boxes, dtype=np.float32).reshape(-1, 4),
            "masks": None,
            "ignore_mask": None,
        }
        if self.with_masks or self.copy_paste is not None:
            out["masks"] = np.stack(
                [self._decode(s, img_id, height, width, out["boxes"][i]) for i, s in enumerate(segms)]
            ) if segms else np.zeros((0, height, width), dtype=np.uint8)
            ignore = np.zeros((height, width), dtype=np.uint8)
            for s, b in zip(crowd_segms, out["ignore_boxes"]):
                ignore |= self._decode(s, img_id, height, width, b)
            out["ignore_mask"] = ignore
        return out

    def decode_annotation(self, ann: dict, img_id: int, height: int, width: int) -> np.ndarray:
        """One annotation's mask ``[height, width]`` uint8 (its box filled when it has no
        segmentation)."""
        x, y, w, h = (float(v) for v in ann["bbox"])
        return self._decode(ann.get("segmentation"), img_id, height, width, np.asarray([x, y, x + w, y + h]))

    def source_image(self, img_id: int) -> Optional[np.ndarray]:
        """The decoded image ``[H, W, 3]`` uint8 of ``img_id`` (from the cache when it is there;
        None for a skipped bad image), for reading only."""
        if self.cache is not None and img_id in self.cache:
            cached = self.cache[img_id]
            return None if cached is None else cached["image"]
        return read_or_skip(self.image_path(img_id), self.on_bad_image, self.skipped,
                            f"image id {img_id} in {self.ann_file}")

    def _decode(self, segm, img_id: int, height: int, width: int, box: np.ndarray) -> np.ndarray:
        if not segm:
            # No segmentation given: the box is the best mask there is.
            m = np.zeros((height, width), dtype=np.uint8)
            x0, y0, x1, y1 = box
            m[int(y0):int(math.ceil(y1)), int(x0):int(math.ceil(x1))] = 1
            return m
        try:
            return decode_segmentation(segm, height, width)
        except Exception as e:  # pycocotools raises bare Exceptions / TypeErrors on bad input
            raise DataError(f"{self.ann_file}: image {img_id}: cannot decode segmentation "
                            f"({type(e).__name__}: {e}); run tools/check_data.py") from None

    def _read(self, img_id: int) -> Optional[dict]:
        """Image and annotations of ``img_id`` as read from disk (None: a bad image, skipped)."""
        path = self.image_path(img_id)
        image = read_or_skip(path, self.on_bad_image, self.skipped, f"image id {img_id} in {self.ann_file}")
        if image is None:
            return None
        h, w = image.shape[:2]
        info = self.coco.imgs[img_id]
        if (info.get("height"), info.get("width")) != (h, w) and img_id not in self._size_named:
            self._size_named.add(img_id)  # once per image (each loader worker has its own set)
            _name_wrong_size(self.ann_file, info, h, w)
        sample = {"image": image, **self.load_annotations(img_id, h, w)}
        if self.panoptic is not None and self.with_semantic:
            sample["stuff_map"] = self.stuff_map(img_id, h, w)
        return sample

    def __getitem__(self, index: int) -> Optional[dict]:
        img_id = self.ids[index]
        if self.cache is None:
            sample = self._read(img_id)
        else:
            if img_id not in self.cache:
                self.cache[img_id] = self._read(img_id)  # a skipped image stays skipped
            cached = self.cache[img_id]
            # Copies: a transform may write into its input, and the cache must stay as read.
            sample = None if cached is None else {
                k: v.copy() if isinstance(v, np.ndarray) else v for k, v in cached.items()}
        if sample is None:
            return None
        h, w = sample["image"].shape[:2]
        if self.proposals is not None:
            if img_id not in self.proposals:
                raise DataError(f"image {img_id} of {self.ann_file} has no precomputed proposals; "
                                f"rerun tools/proposals.py for this dataset")
            sample["proposals"] = np.asarray(self.proposals[img_id], dtype=np.float32).reshape(-1, 4)
        if self.copy_paste is not None:
            sample = self.copy_paste(sample)
        if not self.with_masks:
            sample["masks"] = None  # decoded for the pastes only
        if self.transform is not None:
            sample = self.transform(sample)
        return self._to_tensors(sample, img_id, (h, w))

    def _to_tensors(self, s: dict, img_id: int, orig_size: tuple[int, int]) -> dict:
        image = s["image"]
        out = {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "boxes": torch.from_numpy(s["boxes"]).float().reshape(-1, 4),
            "labels": torch.from_numpy(s["labels"]).long(),
            "ignore_boxes": torch.from_numpy(s["ignore_boxes"]).float().reshape(-1, 4),
            "image_id": int(img_id),
            "orig_size": orig_size,
        }
        if s.get("proposals") is not None:
            out["proposals"] = torch.from_numpy(np.ascontiguousarray(s["proposals"])).float().reshape(-1, 4)
        if self.with_masks:
            out["masks"] = torch.from_numpy(np.ascontiguousarray(s["masks"]))
        if self.with_semantic and s.get("stuff_map") is not None:
            stuff = s["stuff_map"].astype(np.int16) - 1
            out["semantic"] = torch.from_numpy(np.where(stuff < 0, IGNORE, stuff).astype(np.uint8))
        elif self.with_semantic:
            sem = semantic_from_instances(s["masks"], s["labels"], s["ignore_mask"], image.shape[:2])
            out["semantic"] = torch.from_numpy(sem)
        return out
