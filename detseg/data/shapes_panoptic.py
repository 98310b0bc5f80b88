"""The shapes dataset's panoptic variant: the same shapes (things) in front of "stuff" regions
that fill the background: sky above a wavy horizon, ground and water below it, split by a slanted
shore. Written in the COCO panoptic format (``annotations/panoptic_<split>.json`` + the PNG folder
``annotations/panoptic_<split>/``), beside the instances file of the things
(``annotations/instances_<split>.json``) so that the detection heads read the same images.

Every stuff region has its own look (sky: a smooth vertical gradient; ground: blotches; water:
horizontal waves) in colours drawn from its own range, so that a network learns the region from
its texture and colour rather than from where it sits. Deterministic like the detection split.
"""
from __future__ import annotations

import os
from typing import Optional

import cv2
import numpy as np

from .panoptic_format import id_to_rgb, mask_bbox
from .shapes import (CLASSES, FORMAT_VERSION, VOCABULARY, _instance_annotation, _write_png, draw_shapes,
                     ensure_shapes, long_tail_weights, write_json)

# Stuff categories and their COCO ids (after the shapes' ids, like COCO's stuff after its things)
STUFF = {"sky": 101, "ground": 102, "water": 103}
_SPLIT_SALT = {"train": 11, "val": 12}
# RGB ranges each stuff region's base colour is drawn from
_COLOURS = {"sky": ((90, 170), (140, 215), (200, 255)),
            "ground": ((90, 165), (65, 140), (25, 85)),
            "water": ((15, 80), (75, 150), (120, 205))}


def _layout(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """``[H, W]`` index into STUFF's order: 0 sky above a wavy horizon; below it ground and
    water on either side of a slanted shore (which side is water is drawn too)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    horizon = rng.uniform(0.25, 0.55) * h + rng.uniform(3, 10) * np.sin(xx / rng.uniform(15, 40) + rng.uniform(0, 6.3))
    shore = rng.uniform(0.25, 0.75) * w + (yy - h / 2) * rng.uniform(-0.6, 0.6)
    water_right = rng.integers(2) == 1
    below = np.where((xx > shore) == water_right, 2, 1)
    return np.where(yy < horizon, 0, below).astype(np.int32)


def _texture(rng: np.random.Generator, name: str, h: int, w: int) -> np.ndarray:
    """``[H, W, 3]`` float32 image of stuff ``name``'s look."""
    base = np.array([rng.uniform(lo, hi) for lo, hi in _COLOURS[name]], np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if name == "sky":  # lighter towards the horizon
        shade = (yy / h * rng.uniform(20, 50))[..., None]
    elif name == "ground":  # low-frequency blotches
        coarse = rng.normal(0, 1, size=(max(2, h // 16), max(2, w // 16))).astype(np.float32)
        shade = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)[..., None] * rng.uniform(12, 22)
    else:  # waves
        period = rng.uniform(5, 10)
        shade = (np.sin(yy / period * 2 * np.pi + np.sin(xx / 23.0)) * rng.uniform(10, 20))[..., None]
    return base + shade + rng.normal(0, 4, size=(h, w, 3)).astype(np.float32)


def render_panoptic(seed: int, split: str, index: int, classes: tuple[str, ...] = CLASSES,
                    weights: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray, list[dict], list[dict]]:
    """One panoptic shapes image (the shapes' classes drawn with probabilities ``weights``,
    uniform when None).

    Returns:
        image ``[H, W, 3]`` uint8 RGB; segment ids ``[H, W]`` int32 (things 1..N in drawing order,
        then one segment per stuff region present; no void); ``segments_info`` entries (``id``,
        ``category_id``, ``iscrowd``, ``area``, ``bbox`` x, y, w, h); the things as
        {"label", "mask"} (for the instances file).
    """
    rng = np.random.default_rng([seed, _SPLIT_SALT[split], index])
    h, w = int(rng.integers(160, 257)), int(rng.integers(160, 257))
    layout = _layout(rng, h, w)
    image = np.zeros((h, w, 3), np.float32)
    for k, name in enumerate(STUFF):
        region = layout == k
        image[region] = _texture(rng, name, h, w)[region]
    image = np.clip(image, 0, 255).astype(np.uint8)
    things = draw_shapes(rng, image, classes, weights)
    ids = np.zeros((h, w), np.int32)
    segments = []

    def add(mask: np.ndarray, category_id: int) -> None:
        seg_id = len(segments) + 1
        ids[mask] = seg_id
        segments.append({"id": seg_id, "category_id": category_id, "iscrowd": 0, "area": int(mask.sum()),
                         "bbox": mask_bbox(mask)})

    for inst in things:
        add(inst["mask"] > 0, VOCABULARY[classes[inst["label"]]])
    taken = ids > 0
    for k, name in enumerate(STUFF):
        region = (layout == k) & ~taken
        if region.any():
            add(region, STUFF[name])
    return image, ids, segments, things


def categories(classes: tuple[str, ...] = CLASSES) -> list[dict]:
    """The panoptic categories: the shapes (things) then the stuff regions."""
    return ([{"id": VOCABULARY[n], "name": n, "supercategory": "shape", "isthing": 1} for n in classes]
            + [{"id": i, "name": n, "supercategory": "background", "isthing": 0} for n, i in STUFF.items()])


def write_panoptic_split(root: str, split: str, num_images: int, seed: int,
                         classes: tuple[str, ...] = CLASSES, imbalance: float = 1.0) -> str:
    """Write one panoptic split under ``root`` (things long-tailed by ``imbalance``, as
    ``shapes.write_split``); returns the panoptic JSON's path."""
    weights = long_tail_weights(len(classes), imbalance)
    png_dir = os.path.join(root, "annotations", f"panoptic_{split}")
    os.makedirs(os.path.join(root, split), exist_ok=True)
    os.makedirs(png_dir, exist_ok=True)
    images, panoptic, instances = [], [], []
    for index in range(num_images):
        image_id = index + 1
        image, ids, segments, things = render_panoptic(seed, split, index, classes, weights)
        name = f"{image_id:06d}.png"
        _write_png(os.path.join(root, split, name), image)
        _write_png(os.path.join(png_dir, name), id_to_rgb(ids))
        images.append({"id": image_id, "file_name": name, "height": int(image.shape[0]),
                       "width": int(image.shape[1])})
        panoptic.append({"image_id": image_id, "file_name": name, "segments_info": segments})
        for inst in things:
            ann = _instance_annotation(inst, len(instances) + 1, image_id, VOCABULARY[classes[inst["label"]]])
            if ann is not None:
                instances.append(ann)
    info = {"description": f"detseg shapes v{FORMAT_VERSION} panoptic", "seed": seed, "split": split}
    cats = categories(classes)
    write_json(os.path.join(root, "annotations", f"panoptic_{split}.json"),
               {"info": info, "images": images, "annotations": panoptic, "categories": cats})
    # the things alone, in the instances format, for the detection and mask heads
    write_json(os.path.join(root, "annotations", f"instances_{split}.json"),
               {"info": info, "images": images, "annotations": instances,
                "categories": [{k: c[k] for k in ("id", "name", "supercategory")} for c in cats if c["isthing"]]})
    return os.path.join(root, "annotations", f"panoptic_{split}.json")


def ensure_panoptic_shapes(seed: int = 0, num_train: int = 300, num_val: int = 60,
                           cache_dir: Optional[str] = None, classes=None, imbalance: float = 1.0) -> dict:
    """The panoptic shapes dataset in the cache (written on first use, reused afterwards), as
    ``shapes.ensure_shapes``: each split's ``ann_file`` / ``image_dir`` plus ``panoptic_json`` /
    ``panoptic_dir``."""
    return ensure_shapes(seed, num_train, num_val, cache_dir, classes, imbalance,
                         writer=write_panoptic_split, variant="shapes_panoptic")
