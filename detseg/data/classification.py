"""Classification data: one label per image, from a folder per class or from a detection dataset.

Two sources, read into one ``ClassificationDataset``:

- **a folder per class** (torchvision ``ImageFolder``'s convention): ``root/<class>/*.jpg``,
  class names the sub-folder names, sorted; label k is the k-th name. A val folder is read
  with the train folder's class list, so its labels mean the same classes (a class it lacks is
  allowed and counted; a class the train folder lacks is an error naming the folder).
- **object crops from a COCO-format dataset**: every non-crowd annotation's box, grown by
  ``context`` times its size on each side (clipped to the image), is one image of its
  category: a detection dataset becomes a classification one without a new file.

Items are dicts like the detection dataset's: ``image`` uint8 ``[3, S, S]`` (after the
transform), ``label`` (int), ``image_id`` (the item's index), ``orig_size`` (the crop's or the
file's (h, w)); ``collate`` stacks the labels into ``Batch.labels``.
"""
from __future__ import annotations

import logging
import os
from typing import Callable, Optional, Sequence

import albumentations as A
import cv2
import numpy as np
import torch

from .io import DataError, read_image, read_or_skip

logger = logging.getLogger(__name__)

# torchvision's ImageFolder extensions
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def scan_folder(root: str, class_names: Optional[Sequence[str]] = None) -> tuple[list, list[str], dict]:
    """Images of a folder-per-class tree.

    Args:
        root: the folder holding one sub-folder per class.
        class_names: the classes labels refer to (a val split takes the train split's); None:
            the sub-folder names, sorted.

    Returns:
        (items ``[(path, label, None)]`` sorted by class then file name, class names,
        ``{class: image count}`` of the folder's own classes, zeros included).

    Raises:
        DataError: ``root`` is missing or holds no class folder, a class folder of the train
            split holds no image, or (with ``class_names``) a sub-folder names another class.
    """
    if not os.path.isdir(root):
        raise DataError(f"{root}: classification image folder not found (expected root/<class>/*.jpg)")
    found = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not found:
        raise DataError(f"{root}: no class folders (expected one sub-folder of images per class, "
                        f"torchvision ImageFolder's layout)")
    names = list(class_names) if class_names is not None else found
    unknown = [c for c in found if c not in names]
    if unknown:
        raise DataError(f"{root}: class folder(s) {', '.join(unknown[:5])} are not classes of the training "
                        f"data ({', '.join(names[:10])}{' ...' if len(names) > 10 else ''})")
    items, counts = [], {}
    for name in found:
        folder = os.path.join(root, name)
        files = sorted(f for f in os.listdir(folder)
                       if f.lower().endswith(IMG_EXTENSIONS) and os.path.isfile(os.path.join(folder, f)))
        counts[name] = len(files)
        label = names.index(name)
        items += [(os.path.join(folder, f), label, None) for f in files]
    empty = [c for c, n in counts.items() if n == 0]
    if empty and class_names is None:
        raise DataError(f"{root}: class folder(s) {', '.join(empty[:5])} hold no image "
                        f"({', '.join(IMG_EXTENSIONS)}); remove them or add images")
    if not items:
        raise DataError(f"{root}: no images in its class folders ({', '.join(IMG_EXTENSIONS)})")
    return items, names, counts


def coco_crops(ann_file: str, image_dir: str, context: float = 0.1,
               min_size: float = 4.0) -> tuple[list, list[str], list[int]]:
    """Object crops of a COCO-format dataset: ``[(image path, label, (x0, y0, x1, y1))]``, class
    names and category ids (sorted ids; label k is the k-th). Crowd annotations and boxes under
    ``min_size`` pixels a side are left out (counted in the log)."""
    from .coco import load_coco
    coco = load_coco(ann_file, image_dir)
    cat_ids = sorted(coco.getCatIds())
    label_of = {c: i for i, c in enumerate(cat_ids)}
    items, small = [], 0
    for img_id in sorted(coco.getImgIds()):
        info = coco.imgs[img_id]
        path = os.path.join(image_dir, info["file_name"])
        for ann in coco.imgToAnns.get(img_id, []):
            if ann.get("iscrowd", 0):
                continue
            x, y, w, h = (float(v) for v in ann["bbox"])
            if w < min_size or h < min_size:
                small += 1
                continue
            items.append((path, label_of[ann["category_id"]],
                          (x - context * w, y - context * h, x + w + context * w, y + h + context * h)))
    if small:
        logger.info("%s: %d annotation(s) under %g px a side left out of the crops", ann_file, small, min_size)
    if not items:
        raise DataError(f"{ann_file}: no object to crop (every annotation is crowd or under {min_size:g} px)")
    return items, [coco.cats[c]["name"] for c in cat_ids], cat_ids


class ClassificationDataset(torch.utils.data.Dataset):
    """Images with one class each (see the module docstring for the sources).

    Args:
        items: ``[(path, label, box or None)]``; a box crops the image (clipped to it).
        class_names: label k is ``class_names[k]``; cat_ids: the classes' ids (default 1..K).
        source: the folder or annotation file, for messages; ann_file: the annotation file of
            crops (None for folders).
        transform: ``ClassifyTransform`` (or any callable on ``{"image": np.ndarray}``).
        on_bad_image: ``"error"`` or ``"skip"`` (an unreadable file: counted, logged, skipped).
        cache: keep decoded (cropped) images in memory after the first read.
    """

    def __init__(self, items: list, class_names: Sequence[str], *, source: str,
                 cat_ids: Optional[Sequence[int]] = None, ann_file: Optional[str] = None,
                 transform: Optional[Callable] = None, on_bad_image: str = "error", cache: bool = False):
        if on_bad_image not in ("error", "skip"):
            raise ValueError(f"on_bad_image must be 'error' or 'skip', got {on_bad_image!r}")
        self.items = list(items)
        self.class_names = list(class_names)
        self.cat_ids = list(cat_ids) if cat_ids is not None else list(range(1, len(self.class_names) + 1))
        self.source, self.ann_file, self.image_dir = source, ann_file, source
        self.transform = transform
        self.on_bad_image = on_bad_image
        self.skipped: list[str] = []
        self.cache: Optional[dict] = {} if cache else None
        self.ids = list(range(len(self.items)))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def label_map(self) -> dict:
        return {"cat_ids": list(self.cat_ids), "class_names": list(self.class_names)}

    def class_counts(self) -> list[int]:
        """Images per class (label order)."""
        counts = np.bincount([label for _, label, _ in self.items], minlength=self.num_classes)
        return [int(c) for c in counts]

    def image_labels(self) -> list[list[int]]:
        """Per image, its labels (one), as the samplers read them."""
        return [[label] for _, label, _ in self.items]

    def __len__(self) -> int:
        return len(self.items)

    def _read(self, index: int) -> Optional[np.ndarray]:
        path, _, box = self.items[index]
        image = read_or_skip(path, self.on_bad_image, self.skipped, f"item {index} of {self.source}")
        if image is None:
            return None
        if box is not None:
            h, w = image.shape[:2]
            x0, y0 = int(max(0, np.floor(box[0]))), int(max(0, np.floor(box[1])))
            x1, y1 = int(min(w, np.ceil(box[2]))), int(min(h, np.ceil(box[3])))
            if x1 <= x0 or y1 <= y0:
                raise DataError(f"{self.source}: item {index} ({path}): box {box} lies outside the "
                                f"{w} x {h} image")
            image = np.ascontiguousarray(image[y0:y1, x0:x1])
        return image

    def __getitem__(self, index: int) -> Optional[dict]:
        if self.cache is None:
            image = self._read(index)
        else:
            if index not in self.cache:
                self.cache[index] = self._read(index)
            image = self.cache[index]
        if image is None:
            return None
        h, w = image.shape[:2]
        sample = {"image": image}
        if self.transform is not None:
            sample = self.transform(sample)
        return {"image": torch.from_numpy(np.ascontiguousarray(sample["image"].transpose(2, 0, 1))),
                "label": self.items[index][1], "image_id": index, "orig_size": (h, w)}


class ClassifyTransform:
    """The classification pipeline on ``{"image": np.ndarray[H, W, 3]}`` → ``size x size``.

    Test: resize the short side to ``size / crop_ratio`` and take the centre ``size x size``
    (torchvision's ImageNet evaluation: 256 then 224; ``crop_ratio`` 1: the whole image, resized).
    Train, ``augment``: ``"default"``: torchvision's ``RandomResizedCrop`` (area share
    ``min_scale``..1, aspect 3/4..4/3), a horizontal flip (``flip``) and colour jitter;
    ``"flip"``: the test pipeline and a flip; ``"none"``: the test pipeline.
    ``reseed(seed)`` makes the random draws of the next call a function of ``seed``.
    """

    def __init__(self, size: int, *, train: bool, augment: str = "default", crop_ratio: float = 0.875,
                 min_scale: float = 0.08, flip: bool = True):
        resize = [A.SmallestMaxSize(max_size=max(size, int(round(size / crop_ratio))),
                                    interpolation=cv2.INTER_LINEAR),
                  A.CenterCrop(size, size)]
        if not train or augment == "none":
            steps = resize
        elif augment == "flip":
            steps = resize + ([A.HorizontalFlip(p=0.5)] if flip else [])
        else:
            steps = [A.RandomResizedCrop(size=(size, size), scale=(min_scale, 1.0), ratio=(3 / 4, 4 / 3),
                                         interpolation=cv2.INTER_LINEAR)]
            steps += [A.HorizontalFlip(p=0.5)] if flip else []
            steps.append(A.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.05, p=0.7))
        self.compose = A.Compose(steps, seed=0)

    def reseed(self, seed: int) -> None:
        self.compose.set_random_seed(seed)

    def __call__(self, s: dict) -> dict:
        return {**s, "image": self.compose(image=s["image"])["image"]}


def check_folder(root: str, class_names: Optional[Sequence[str]] = None) -> tuple[list, dict]:
    """The dataset doctor for a folder per class: every problem, not only the first.

    Returns:
        (problems ``[detseg.data.validate.Problem]``: ``no_folder``, ``no_class_folders``,
        ``unknown_class`` (a val folder's class the training classes lack), ``empty_class``,
        ``unreadable_image`` (each file that does not decode), ``not_an_image`` (a file of
        another extension, which the loader skips), and ``{class: image count}``).
    """
    from .validate import Problem
    if not os.path.isdir(root):
        return [Problem(root, None, None, "no_folder", "folder not found")], {}
    found = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not found:
        return [Problem(root, None, None, "no_class_folders",
                        "no sub-folders: expected one folder of images per class")], {}
    problems, counts = [], {}
    for name in found:
        folder = os.path.join(root, name)
        if class_names is not None and name not in class_names:
            problems.append(Problem(folder, None, None, "unknown_class", "not a class of the training data"))
        n = 0
        for f in sorted(os.listdir(folder)):
            path = os.path.join(folder, f)
            if not os.path.isfile(path):
                continue
            if not f.lower().endswith(IMG_EXTENSIONS):
                problems.append(Problem(path, None, None, "not_an_image", "skipped by the loader (extension)"))
                continue
            try:
                read_image(path)
                n += 1
            except DataError as e:
                problems.append(Problem(path, None, None, "unreadable_image", str(e).split(": ", 1)[-1]))
        counts[name] = n
        if n == 0:
            problems.append(Problem(folder, None, None, "empty_class", "no readable image"))
    return problems, counts


def format_counts(counts: dict) -> str:
    """Images per class, and the ratio of the largest class to the smallest."""
    width = max([len(c) for c in counts] + [5])
    lines = [f"{'class':<{width}}  images"] + [f"{c:<{width}}  {n:6d}" for c, n in counts.items()]
    nonzero = [n for n in counts.values() if n]
    if nonzero:
        lines.append(f"{len(counts)} classes, {sum(nonzero)} images, largest / smallest class "
                     f"{max(nonzero) / min(nonzero):.1f}")
    return "\n".join(lines)
