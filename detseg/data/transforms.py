"""Augmentation presets (albumentations) and batching.

A *sample* is a dict of numpy arrays: ``image`` uint8 ``[H, W, 3]``, ``boxes`` float32 ``[N, 4]``
xyxy, ``labels`` int64 ``[N]``, ``ignore_boxes`` float32 ``[M, 4]``, ``masks`` uint8 ``[N, H, W]``
or None, ``ignore_mask`` uint8 ``[H, W]`` or None, and optionally ``proposals`` float32 ``[P, 4]``
(precomputed region proposals) and ``stuff_map`` uint8 ``[H, W]`` (panoptic data). Every
transform keeps boxes, masks and the image in step and drops instances that vanish.
"""
from __future__ import annotations

import math
import random
from typing import Optional, Sequence

import albumentations as A
import cv2
import numpy as np
import torch

from ..structures import Batch
from .coco import IGNORE

PAD_DIVISOR = 32
# Per-pixel label maps a sample may carry beside its instance masks, moved with the image
# (nearest neighbour; 0 where a shift or scale brings in pixels from outside): the crowd
# regions, and a panoptic dataset's stuff map (``CocoDataset``: 0 void, 1 things, k + 2 stuff k).
LABEL_MAPS = ("ignore_mask", "stuff_map")


# --------------------------------------------------------------------------- resize


def resize_scale(h: int, w: int, min_size: int, max_size: int) -> float:
    """Scale that makes the shortest edge ``min_size`` without the longest exceeding ``max_size``."""
    return min(min_size / min(h, w), max_size / max(h, w))


def resize_sample(s: dict, scale: float) -> dict:
    """Resize image (bilinear), masks (nearest) and boxes by ``scale``."""
    h, w = s["image"].shape[:2]
    nh, nw = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
    if (nh, nw) == (h, w):
        return s
    out = dict(s)
    out["image"] = cv2.resize(s["image"], (nw, nh), interpolation=cv2.INTER_LINEAR)
    sx, sy = nw / w, nh / h
    factor = np.array([sx, sy, sx, sy], dtype=np.float32)
    out["boxes"] = s["boxes"] * factor
    out["ignore_boxes"] = s["ignore_boxes"] * factor
    if s.get("proposals") is not None:
        out["proposals"] = s["proposals"] * factor
    if s.get("masks") is not None:
        m = s["masks"]
        out["masks"] = (np.stack([cv2.resize(x, (nw, nh), interpolation=cv2.INTER_NEAREST_EXACT) for x in m])
                        if len(m) else np.zeros((0, nh, nw), dtype=np.uint8))
    for key in LABEL_MAPS:
        if s.get(key) is not None:
            out[key] = cv2.resize(s[key], (nw, nh), interpolation=cv2.INTER_NEAREST_EXACT)
    return out


class ResizeShortestEdge:
    """Resize so the shortest edge is one of ``min_sizes`` (picked at random) and the longest
    is at most ``max_size``; detectron2 / torchvision's detection resize."""

    def __init__(self, min_sizes: Sequence[int] | int, max_size: int):
        self.min_sizes = [min_sizes] if isinstance(min_sizes, int) else list(min_sizes)
        self.max_size = max_size
        self.rng = random.Random()

    def __call__(self, s: dict) -> dict:
        h, w = s["image"].shape[:2]
        size = self.min_sizes[0] if len(self.min_sizes) == 1 else self.rng.choice(self.min_sizes)
        return resize_sample(s, resize_scale(h, w, size, self.max_size))

    def __repr__(self) -> str:
        return f"ResizeShortestEdge(min_sizes={self.min_sizes}, max_size={self.max_size})"


# --------------------------------------------------------------------------- augmentation


def default_augmentations() -> list:
    """The train preset: flip, scale and shift, colour jitter, blur or noise."""
    return [
        A.HorizontalFlip(p=0.5),
        A.Affine(scale=(0.75, 1.25), translate_percent=(-0.1, 0.1), border_mode=cv2.BORDER_CONSTANT,
                 fill=0, fill_mask=0, p=0.7),
        A.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.05, p=0.7),
        A.OneOf([A.GaussianBlur(blur_limit=(3, 5)), A.GaussNoise(std_range=(0.02, 0.08))], p=0.3),
    ]


class Augment:
    """Albumentations pipeline that keeps boxes, crowd boxes and masks in sync with the image.

    Instances whose box loses more than ``1 - min_visibility`` of its area, or shrinks under
    ``min_size`` pixels, are dropped together with their mask.
    """

    def __init__(self, transforms: list, min_visibility: float = 0.3, min_size: float = 2.0,
                 seed: Optional[int] = None):
        self.compose = A.Compose(
            transforms,
            bbox_params=A.BboxParams(format="pascal_voc", label_fields=["ids"], clip=True,
                                     min_visibility=min_visibility, min_width=min_size,
                                     min_height=min_size),
            seed=seed,
        )

    def reseed(self, seed: int) -> None:
        self.compose.set_random_seed(seed)

    def __call__(self, s: dict) -> dict:
        n, m = len(s["boxes"]), len(s["ignore_boxes"])
        h, w = s["image"].shape[:2]
        # Proposals ride along as extra boxes: flipped, scaled and clipped with the image, and
        # dropped where the crop leaves too little of them, like ground truth.
        proposals = s.get("proposals")
        extra = proposals if proposals is not None else np.zeros((0, 4), np.float32)
        boxes = np.concatenate([s["boxes"], s["ignore_boxes"], extra]).reshape(-1, 4)
        # Albumentations rejects boxes outside the image even with clip=True; clip first.
        boxes = np.clip(boxes, 0, [w, h, w, h]).astype(np.float32)
        ids = np.arange(len(boxes))
        kwargs = {"image": s["image"], "bboxes": boxes, "ids": ids}
        has_masks = s.get("masks") is not None
        maps = [k for k in LABEL_MAPS if s.get(k) is not None] if has_masks else []
        if has_masks:
            kwargs["masks"] = list(s["masks"]) + [s[k] for k in maps]
        r = self.compose(**kwargs)
        kept_ids = np.asarray(r["ids"], dtype=np.int64).reshape(-1)
        kept_boxes = np.asarray(r["bboxes"], dtype=np.float32).reshape(-1, 4)
        pos = kept_ids < n
        out = dict(s)
        out["image"] = r["image"]
        out["boxes"] = kept_boxes[pos]
        out["labels"] = s["labels"][kept_ids[pos]]
        out["ignore_boxes"] = kept_boxes[(kept_ids >= n) & (kept_ids < n + m)]
        if proposals is not None:
            out["proposals"] = kept_boxes[kept_ids >= n + m]
        if has_masks:
            new_masks = r["masks"]
            nh, nw = r["image"].shape[:2]
            pos_ids = kept_ids[pos]
            out["masks"] = (np.stack([np.asarray(new_masks[i]) for i in pos_ids]).astype(np.uint8)
                            if len(pos_ids) else np.zeros((0, nh, nw), dtype=np.uint8))
            for j, key in enumerate(maps):
                out[key] = np.asarray(new_masks[n + j]).astype(np.uint8)
        return out


def fit_boxes_to_masks(s: dict) -> dict:
    """Replace each box by its mask's tight extent and drop instances whose mask vanished.

    Geometric augmentation followed by resizing moves masks (nearest-neighbour, snapped to
    pixels) and boxes (exact arithmetic) apart by a pixel or more; when masks exist they are the
    finer description, so the boxes are re-derived from them. A no-op without masks.
    """
    masks = s.get("masks")
    if masks is None:
        return s
    if not len(masks):
        return s
    rows, cols = masks.any(axis=2), masks.any(axis=1)  # [N, H], [N, W]
    keep = rows.any(axis=1)
    h, w = masks.shape[1:]
    y0 = rows.argmax(axis=1)
    y1 = h - rows[:, ::-1].argmax(axis=1)
    x0 = cols.argmax(axis=1)
    x1 = w - cols[:, ::-1].argmax(axis=1)
    out = dict(s)
    out["boxes"] = np.stack([x0, y0, x1, y1], axis=1).astype(np.float32)[keep]
    out["labels"] = s["labels"][keep]
    out["masks"] = masks[keep]
    return out


class Pipeline:
    """Apply sample transforms in order; ``reseed`` reaches every random member."""

    def __init__(self, *steps):
        self.steps = [s for s in steps if s is not None]

    def reseed(self, seed: int) -> None:
        for i, step in enumerate(self.steps):
            if isinstance(step, Augment):
                step.reseed(seed + i)
            elif isinstance(step, ResizeShortestEdge):
                step.rng.seed(seed + i)

    def __call__(self, s: dict) -> dict:
        for step in self.steps:
            s = step(s)
        return s

    def __repr__(self) -> str:
        return "Pipeline(" + ", ".join(type(s).__name__ for s in self.steps) + ")"


AUGMENT_PRESETS = ("default", "flip", "none")


def train_transform(min_sizes: Sequence[int], max_size: int, augment: str = "default") -> Pipeline:
    """Train preset, then multi-scale resize: ``default`` is :func:`default_augmentations`;
    ``flip`` only a horizontal flip half the time (detectron2's default training augmentation
    beside the resize); ``none`` nothing but the resize."""
    if augment not in AUGMENT_PRESETS:
        raise ValueError(f"augment must be one of {AUGMENT_PRESETS}, got {augment!r}")
    aug = None
    if augment == "default":
        aug = Augment(default_augmentations())
    elif augment == "flip":
        aug = Augment([A.HorizontalFlip(p=0.5)])
    return Pipeline(aug, ResizeShortestEdge(min_sizes, max_size), fit_boxes_to_masks)


def eval_transform(min_size: int, max_size: int) -> Pipeline:
    """Eval preset: resize the shortest edge to ``min_size`` with the longest capped."""
    return Pipeline(ResizeShortestEdge(min_size, max_size))


# --------------------------------------------------------------------------- batching


def _pad_to(n: int, divisor: int) -> int:
    return int(math.ceil(n / divisor) * divisor)


def collate(items: list, divisor: int = PAD_DIVISOR) -> Batch:
    """Batch samples: pad images to a common size that is a multiple of ``divisor``.

    Returns:
        ``Batch`` (``detseg.structures``) with ``images`` uint8 ``[B, 3, Hp, Wp]`` (zero-padded bottom/right),
        ``image_sizes`` list of (h, w) before padding, ``orig_sizes`` list of the files' (h, w),
        ``image_ids``, ``targets`` (per-image dicts of boxes/labels/ignore_boxes/masks), and
        ``semantic`` uint8 ``[B, Hp, Wp]`` padded with 255 when the samples carry it, and
        ``proposals`` (list of ``Tensor[P_i, 4]``) when they carry precomputed proposals,
        ``labels`` int64 ``[B]`` when they carry an image ``label`` (classification).
        ``num_skipped`` counts items the dataset skipped (returned None).
    """
    kept = [it for it in items if it is not None]
    skipped = len(items) - len(kept)
    if not kept:
        return Batch(images=torch.zeros(0, 3, divisor, divisor, dtype=torch.uint8), num_skipped=skipped)
    hp = _pad_to(max(it["image"].shape[1] for it in kept), divisor)
    wp = _pad_to(max(it["image"].shape[2] for it in kept), divisor)
    images = torch.zeros(len(kept), 3, hp, wp, dtype=torch.uint8)
    for i, it in enumerate(kept):
        _, h, w = it["image"].shape
        images[i, :, :h, :w] = it["image"]
    batch = Batch(
        images=images,
        image_sizes=[tuple(it["image"].shape[1:]) for it in kept],
        orig_sizes=[tuple(it["orig_size"]) for it in kept],
        image_ids=[it["image_id"] for it in kept],
        targets=[{k: it[k] for k in ("boxes", "labels", "ignore_boxes", "masks") if k in it}
                 for it in kept],
        num_skipped=skipped,
    )
    if "label" in kept[0]:
        batch.labels = torch.tensor([it["label"] for it in kept], dtype=torch.int64)
    if "proposals" in kept[0]:
        batch.proposals = [it["proposals"] for it in kept]
    if "semantic" in kept[0]:
        sem = torch.full((len(kept), hp, wp), IGNORE, dtype=torch.uint8)
        for i, it in enumerate(kept):
            h, w = it["semantic"].shape
            sem[i, :h, :w] = it["semantic"]
        batch.semantic = sem
    return batch
