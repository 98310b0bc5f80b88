"""Copy-paste augmentation (Ghiasi et al. 2021, "Simple Copy-Paste is a Strong Data Augmentation
Method for Instance Segmentation"), with a rarity-weighted choice of what to paste.

Objects are cut from other training images along their masks, scaled and flipped at random, and
pasted at a random place in the image being read, before the train transform. The objects the
pastes cover lose those pixels: their masks shrink and their boxes shrink to what is still
visible, and an object left with less than ``min_visible`` of its pixels is dropped (a sliver is
not a findable object). A pasted object's box is its pasted mask's extent.

What to paste: an object of class c is drawn with probability proportional to
``n_c ** (1 - rarity)`` over the classes (n_c: the class's training instances), then one of that
class's instances uniformly: ``rarity`` 0 draws every training instance alike (the paper's random
objects, so mostly frequent classes), 1 every class alike (a rare class pasted as often as a
frequent one), in between a tempered mix.
"""
from __future__ import annotations

from typing import Optional

import cv2
import numpy as np


class CopyPaste:
    """Pastes up to ``max_objects`` objects into a sample with probability ``prob``.

    Args:
        dataset: the training ``CocoDataset`` the objects come from (it reads and decodes them,
            through its cache when it has one).
        prob: share of samples that get pasted objects.
        max_objects: objects pasted into such a sample: 1 to this many, uniformly.
        rarity: how strongly rare classes are preferred (see the module docstring).
        scale: range of the random scale factor of a pasted object.
        min_visible: an object covered by pastes keeps at least this share of its pixels, else
            it is dropped.

    ``__call__(sample)`` takes and returns the raw sample dict (``image`` uint8 ``[H, W, 3]``,
    ``boxes`` float32 ``[N, 4]``, ``labels`` ``[N]``, ``masks`` uint8 ``[N, H, W]``,
    ``ignore_mask`` uint8 ``[H, W]``); ``reseed(seed)`` makes its draws a function of ``seed``.
    """

    def __init__(self, dataset, *, prob: float = 0.5, max_objects: int = 3,
                 rarity: float = 1.0, scale: tuple[float, float] = (0.5, 1.5), min_visible: float = 0.1):
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"copy_paste prob must be in [0, 1], got {prob}")
        if max_objects < 1:
            raise ValueError(f"copy_paste max_objects must be >= 1, got {max_objects}")
        if len(scale) != 2 or not 0 < scale[0] <= scale[1]:
            raise ValueError(f"copy_paste scale must be [low, high] with 0 < low <= high, got {list(scale)}")
        self.dataset = dataset
        self.prob, self.max_objects, self.rarity = float(prob), int(max_objects), float(rarity)
        self.scale, self.min_visible = (float(scale[0]), float(scale[1])), float(min_visible)
        self.instances = dataset.instance_refs()  # per class: (image id, annotation index)
        self.class_probs = class_probabilities([len(x) for x in self.instances], self.rarity)
        self.rng = np.random.default_rng(0)

    def reseed(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def __call__(self, sample: dict) -> dict:
        if self.class_probs is None or self.rng.random() >= self.prob:
            return sample
        for _ in range(int(self.rng.integers(1, self.max_objects + 1))):
            obj = self._draw()
            if obj is not None:
                sample = paste(sample, *obj, self._place(obj[1].shape, sample["image"].shape[:2]),
                               self.min_visible)
        return sample

    def _draw(self) -> Optional[tuple[np.ndarray, np.ndarray, int]]:
        """One object: (image patch ``[h, w, 3]``, its mask ``[h, w]``, label), scaled and maybe
        flipped; None when the drawn instance cannot be read (a skipped image) or is empty."""
        label = int(self.rng.choice(len(self.class_probs), p=self.class_probs))
        img_id, j = self.instances[label][int(self.rng.integers(len(self.instances[label])))]
        image = self.dataset.source_image(img_id)
        if image is None:
            return None
        ann = self.dataset.coco.imgToAnns[img_id][j]
        h, w = image.shape[:2]
        mask = self.dataset.decode_annotation(ann, img_id, h, w)
        ys, xs = np.nonzero(mask)
        if len(ys) == 0:
            return None
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        patch, mask = image[y0:y1, x0:x1], mask[y0:y1, x0:x1]
        s = self.rng.uniform(*self.scale)
        size = (max(1, round((x1 - x0) * s)), max(1, round((y1 - y0) * s)))
        patch = cv2.resize(patch, size, interpolation=cv2.INTER_LINEAR)
        mask = cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST)
        if self.rng.random() < 0.5:
            patch, mask = patch[:, ::-1], mask[:, ::-1]
        return np.ascontiguousarray(patch), np.ascontiguousarray(mask), label

    def _place(self, patch_hw: tuple[int, int], image_hw: tuple[int, int]) -> tuple[int, int]:
        """Top-left corner (y, x) of a patch placed at random; a patch larger than the image
        sticks out past its bottom-right edges (``paste`` crops it)."""
        return (int(self.rng.integers(max(1, image_hw[0] - patch_hw[0] + 1))),
                int(self.rng.integers(max(1, image_hw[1] - patch_hw[1] + 1))))


def class_probabilities(counts: list[int], rarity: float) -> Optional[np.ndarray]:
    """The probability of pasting each class, ``n_c ** (1 - rarity)`` normalised over the classes
    that have instances (None when none has)."""
    n = np.asarray(counts, dtype=np.float64)
    w = np.where(n > 0, np.power(np.maximum(n, 1), 1.0 - rarity), 0.0)
    return w / w.sum() if w.sum() > 0 else None


def paste(sample: dict, patch: np.ndarray, mask: np.ndarray, label: int, at: tuple[int, int],
          min_visible: float = 0.1) -> dict:
    """``sample`` with ``patch`` (``[h, w, 3]``) pasted along ``mask`` (``[h, w]``, nonzero =
    object) with its top-left corner at ``at`` (y, x), cropped to the image; the covered objects'
    masks and boxes updated, the pasted object appended with label ``label`` and its mask's box.
    Works in place on ``sample``'s arrays and returns it."""
    image = sample["image"]
    H, W = image.shape[:2]
    y, x = at
    h, w = min(mask.shape[0], H - y), min(mask.shape[1], W - x)
    if h <= 0 or w <= 0:
        return sample
    placed = np.zeros((H, W), dtype=np.uint8)
    placed[y:y + h, x:x + w] = mask[:h, :w] > 0
    if not placed.any():
        return sample
    covered = placed.astype(bool)
    image[covered] = patch[:h, :w][mask[:h, :w] > 0]
    masks, boxes, labels = sample["masks"], sample["boxes"], sample["labels"]
    keep = np.ones(len(masks), dtype=bool)
    for i in range(len(masks)):
        before = int(masks[i].sum())
        hit = masks[i].astype(bool) & covered
        if not hit.any():
            continue
        masks[i][hit] = 0
        left = before - int(hit.sum())
        if left == 0 or left < min_visible * before:
            keep[i] = False
        else:
            boxes[i] = mask_box(masks[i])
    if sample.get("ignore_mask") is not None:
        sample["ignore_mask"][covered] = 0
    sample["masks"] = np.concatenate([masks[keep], placed[None]], axis=0)
    sample["boxes"] = np.concatenate([boxes[keep], mask_box(placed)[None]], axis=0).astype(np.float32)
    sample["labels"] = np.concatenate([labels[keep], np.asarray([label], dtype=labels.dtype)])
    return sample


def mask_box(mask: np.ndarray) -> np.ndarray:
    """The xyxy box ``[4]`` float32 of a mask's nonzero pixels (pixel edges: a one-pixel mask at
    (y, x) has the box (x, y, x + 1, y + 1))."""
    ys, xs = np.nonzero(mask)
    return np.asarray([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float32)

