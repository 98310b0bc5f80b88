"""Deterministic synthetic COCO-format dataset: the built-in default data.

Each image holds 1-6 filled shapes (circle, rectangle, triangle, hexagon by default; any of
``VOCABULARY`` on request, so that a second dataset can share some classes with the first and
not others) of varied size and colour on a noisy or textured background; later shapes occlude
earlier ones. Per split it writes
``<split>/NNNNNN.png`` images, ``semantic_<split>/NNNNNN.png`` maps (0 background, k+1 for class k)
and ``annotations/instances_<split>.json`` with polygon segmentations of each visible part.

The same seed gives identical JSON and image bytes: every random draw comes from a generator
seeded by (seed, split, index), PNGs are written with fixed settings, and JSON with fixed
formatting.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Callable, Optional

import cv2
import numpy as np

from ..outputs import OutputDir, foreign_files, read_manifest
from ..utils import default_cache_dir
from .panoptic_format import mask_bbox, panoptic_paths

CLASSES = ("circle", "rectangle", "triangle", "hexagon")
# Every shape that can be drawn, with its category id. Non-contiguous COCO-style ids on purpose:
# the loader must map them to 0..K-1 and back. A shape keeps its id in every class list.
VOCABULARY = {"circle": 1, "rectangle": 2, "triangle": 5, "hexagon": 9,
              "star": 11, "ellipse": 12, "cross": 13, "pentagon": 14}
CATEGORY_IDS = tuple(VOCABULARY[c] for c in CLASSES)
FORMAT_VERSION = 2
_SPLIT_SALT = {"train": 1, "val": 2}


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    kind = rng.integers(3)
    base = rng.integers(0, 256, size=3)
    # Textures stay lower-contrast than the shapes so that a small CNN trained from scratch on a
    # CPU learns objects, not stripes, within minutes; the point is a quick, honest default run.
    other = np.clip(base + rng.integers(-60, 61, size=3), 0, 255)
    if kind == 0:  # flat colour + gaussian noise
        img = np.broadcast_to(base, (h, w, 3)).astype(np.float32)
    elif kind == 1:  # linear gradient between two colours
        t = np.linspace(0.0, 1.0, w, dtype=np.float32)[None, :, None]
        img = np.broadcast_to(base * (1 - t) + other * t, (h, w, 3)).astype(np.float32)
    else:  # stripes / checker texture
        period = int(rng.integers(6, 24))
        yy, xx = np.mgrid[0:h, 0:w]
        pattern = ((xx // period + yy // period * int(rng.integers(0, 2))) % 2)[..., None]
        img = np.where(pattern, base, other).astype(np.float32)
    img = img + rng.normal(0.0, rng.uniform(3.0, 12.0), size=(h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _shape_polygon(rng: np.random.Generator, name: str, cx: float, cy: float, r: float) -> np.ndarray:
    """Outline of shape ``name`` centred at (cx, cy) with size ``r``, as int32 points ``[P, 2]``."""
    angle = rng.uniform(0, 2 * np.pi)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    if name == "circle":
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        pts = np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1)
    elif name == "rectangle":
        aspect = rng.uniform(0.5, 1.0)
        hw, hh = r, r * aspect
        corners = np.array([[-hw, -hh], [hw, -hh], [hw, hh], [-hw, hh]])
        pts = corners @ rot.T + [cx, cy]
    elif name == "ellipse":
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        local = np.stack([r * np.cos(t), r * rng.uniform(0.35, 0.6) * np.sin(t)], 1)
        pts = local @ rot.T + [cx, cy]
    elif name == "star":  # five points, inner radius 0.45 r
        t = angle + np.arange(10) * np.pi / 5
        rad = np.where(np.arange(10) % 2 == 0, r, 0.45 * r)
        pts = np.stack([cx + rad * np.cos(t), cy + rad * np.sin(t)], 1)
    elif name == "cross":  # a plus sign, arms 0.35 r thick
        a, b = r, 0.35 * r
        local = np.array([[-b, -a], [b, -a], [b, -b], [a, -b], [a, b], [b, b], [b, a], [-b, a],
                          [-b, b], [-a, b], [-a, -b], [-b, -b]])
        pts = local @ rot.T + [cx, cy]
    else:
        n = {"triangle": 3, "pentagon": 5, "hexagon": 6}[name]
        t = angle + np.arange(n) * 2 * np.pi / n
        pts = np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1)
    return np.round(pts).astype(np.int32)


def check_classes(classes) -> tuple[str, ...]:
    """``classes`` as a tuple (default ``CLASSES``); ValueError naming an unknown or repeated one."""
    if classes is None:
        return CLASSES
    classes = tuple(classes)
    unknown = [c for c in classes if c not in VOCABULARY]
    if unknown or not classes or len(set(classes)) != len(classes):
        raise ValueError(f"shapes classes must be distinct names from {', '.join(VOCABULARY)}; got "
                         f"{', '.join(classes) or 'none'}")
    return classes


def _mask_to_polygons(mask: np.ndarray) -> list[list[float]]:
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polys = []
    for c in contours:
        if len(c) >= 3 and cv2.contourArea(c) >= 4:
            polys.append([float(v) for v in c.reshape(-1)])
    return polys


def render_image(seed: int, split: str, index: int, classes: tuple[str, ...] = CLASSES,
                 weights: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Draw one image with shapes of ``classes`` (drawn with probabilities ``weights``, uniform
    when None).

    Returns:
        image (np.ndarray[H, W, 3] uint8 RGB), semantic (np.ndarray[H, W] uint8, 0 = background,
        k+1 = class k), instances (list of {"label", "mask" [H, W] uint8}) for visible shapes.
    """
    rng = np.random.default_rng([seed, _SPLIT_SALT[split], index])
    h, w = int(rng.integers(160, 257)), int(rng.integers(160, 257))
    image = _background(rng, h, w)
    instances = draw_shapes(rng, image, classes, weights)
    semantic = np.zeros((h, w), dtype=np.uint8)
    for inst in instances:
        semantic[inst["mask"] > 0] = inst["label"] + 1
    return image, semantic, instances


def long_tail_weights(num_classes: int, imbalance: float) -> Optional[np.ndarray]:
    """Class probabilities decaying exponentially from the first class to the last, the first
    ``imbalance`` times as likely as the last (None for 1: uniform)."""
    if imbalance <= 1 or num_classes < 2:
        return None
    w = imbalance ** (-np.arange(num_classes) / (num_classes - 1))
    return w / w.sum()


def draw_shapes(rng: np.random.Generator, image: np.ndarray, classes: tuple[str, ...],
                weights: Optional[np.ndarray] = None) -> list[dict]:
    """Draw 1-6 shapes of ``classes`` onto ``image`` (``[H, W, 3]`` uint8, in place), later ones
    occluding earlier ones; the visible ones as {"label", "mask" ``[H, W]`` uint8}, in drawing
    order (a shape with fewer than 30 visible pixels is not a findable object and is left out)."""
    h, w = image.shape[:2]
    owner = np.full((h, w), -1, dtype=np.int32)  # which shape is visible at each pixel
    labels = []
    for i in range(int(rng.integers(1, 7))):
        # (the uniform draw stays rng.integers: the default data keeps its bytes)
        cls = int(rng.integers(len(classes))) if weights is None else int(rng.choice(len(classes), p=weights))
        r = rng.uniform(12, min(h, w) / 3.2)
        cx, cy = rng.uniform(r * 0.3, w - r * 0.3), rng.uniform(r * 0.3, h - r * 0.3)
        pts = _shape_polygon(rng, classes[cls], cx, cy, r)
        m = np.zeros((h, w), dtype=np.uint8)
        cv2.fillPoly(m, [pts], 1)
        colour = rng.integers(0, 256, size=3)
        shade = np.clip(colour + rng.normal(0, 6, size=(h, w, 3)), 0, 255).astype(np.uint8)
        image[m > 0] = shade[m > 0]
        owner[m > 0] = i
        labels.append(cls)
    instances = []
    for i, cls in enumerate(labels):
        m = (owner == i).astype(np.uint8)
        if m.sum() >= 30:
            instances.append({"label": cls, "mask": m})
    return instances


def _instance_annotation(inst: dict, ann_id: int, image_id: int, category_id: int) -> Optional[dict]:
    polys = _mask_to_polygons(inst["mask"])
    if not polys:
        return None
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "bbox": mask_bbox(inst["mask"]),
        "area": int(inst["mask"].sum()),
        "segmentation": polys,
        "iscrowd": 0,
    }


def _write_png(path: str, rgb_or_gray: np.ndarray) -> None:
    arr = rgb_or_gray[..., ::-1] if rgb_or_gray.ndim == 3 else rgb_or_gray
    if not cv2.imwrite(path, np.ascontiguousarray(arr), [cv2.IMWRITE_PNG_COMPRESSION, 3]):
        raise OSError(f"could not write {path}")


def write_split(root: str, split: str, num_images: int, seed: int,
                classes: tuple[str, ...] = CLASSES, imbalance: float = 1.0) -> str:
    """Write one split of shapes of ``classes`` under ``root`` (the classes long-tailed by
    ``imbalance``, see ``long_tail_weights``); returns the annotation file's path."""
    weights = long_tail_weights(len(classes), imbalance)
    os.makedirs(os.path.join(root, split), exist_ok=True)
    os.makedirs(os.path.join(root, f"semantic_{split}"), exist_ok=True)
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    images, annotations = [], []
    ann_id = 1
    for index in range(num_images):
        image_id = index + 1
        image, semantic, instances = render_image(seed, split, index, classes, weights)
        name = f"{image_id:06d}.png"
        _write_png(os.path.join(root, split, name), image)
        _write_png(os.path.join(root, f"semantic_{split}", name), semantic)
        images.append({"id": image_id, "file_name": name,
                       "height": int(image.shape[0]), "width": int(image.shape[1])})
        for inst in instances:
            ann = _instance_annotation(inst, ann_id, image_id, VOCABULARY[classes[inst["label"]]])
            if ann is not None:
                annotations.append(ann)
                ann_id += 1
    dataset = {
        "info": {"description": f"detseg shapes v{FORMAT_VERSION}", "seed": seed, "split": split,
                 **({"imbalance": imbalance} if imbalance > 1 else {})},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": VOCABULARY[name], "name": name, "supercategory": "shape"}
                       for name in classes],
    }
    ann_path = os.path.join(root, "annotations", f"instances_{split}.json")
    write_json(ann_path, dataset)
    return ann_path


def write_json(path: str, data: dict) -> None:
    """Fixed formatting (sorted keys, no spaces): the same seed gives the same bytes."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, separators=(",", ":"), sort_keys=True)


class NotShapesFolder(FileExistsError):
    """The output folder holds files that are not a shapes dataset; nothing is replaced."""


def is_shapes_folder(path: str) -> bool:
    """Whether ``path`` holds a dataset this module wrote (its annotation file says so)."""
    ann = os.path.join(path, "annotations", "instances_train.json")
    try:
        with open(ann, "rb") as f:
            # "info" is the last of the sorted keys: its description sits at the file's end, after
            # every image and annotation
            f.seek(max(0, os.path.getsize(ann) - 4096))
            tail = f.read()
    except OSError:
        return False
    return b'"description":"detseg shapes v' in tail


TOOL = "make_shapes"


def not_generated(path: str) -> list[str]:
    """Files in shapes folder ``path`` that the generator did not write (or that changed since):
    by its manifest, or, in a folder from before the manifest, those its annotation files do
    not list."""
    if read_manifest(path) is not None:
        return foreign_files(path, TOOL)
    expected = set()
    for split, p in split_paths(path).items():
        expected.add(os.path.relpath(p["ann_file"], path))
        try:
            with open(p["ann_file"], encoding="utf-8") as f:
                names = [im["file_name"] for im in json.load(f)["images"]]
        except (OSError, ValueError, KeyError, TypeError):
            return foreign_files(path, TOOL, {"files": {}})  # not readable as ours: all of it
        expected.update(os.path.join(folder, n) for n in names for folder in (split, f"semantic_{split}"))
    return [rel for rel in foreign_files(path, TOOL, {"files": {}}) if rel not in expected]


def generate(out_dir: str, seed: int = 0, num_train: int = 300, num_val: int = 60,
             classes=None, keep_complete: bool = False, imbalance: float = 1.0,
             writer: Optional[Callable] = None) -> dict:
    """Write train and val splits into ``out_dir`` (atomically: built beside it, then renamed).

    ``writer``: what writes a split, ``writer(root, split, num_images, seed, classes, imbalance)``;
    default ``write_split``; ``detseg.data.shapes_panoptic.write_panoptic_split`` writes the
    panoptic variant (stuff regions behind the shapes, the COCO panoptic files beside the
    instances files of the things).
    ``imbalance``: the train split long-tailed (the first class ``imbalance`` times as frequent as
    the last, exponential decay between); val stays balanced, so every class is measured alike.

    An existing ``out_dir`` is replaced only when it is empty or a shapes dataset written
    earlier holding nothing else (its manifest, ``detseg.outputs``): a folder of anything else,
    or one where the user added or changed a file, raises ``NotShapesFolder`` before a file is
    touched.
    ``keep_complete`` (the cache): a complete dataset that another process renamed into place
    while this one was building is kept, and this build dropped; replacing it would delete it
    under a process that may already read it.

    Returns:
        {"train": {"ann_file", "image_dir"}, "val": {...}}; a panoptic dataset adds
        "panoptic_json" and "panoptic_dir" to each split.
    """
    classes = check_classes(classes)
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir) and not (os.path.isdir(out_dir) and not os.listdir(out_dir)):
        if not (os.path.isdir(out_dir) and is_shapes_folder(out_dir)):
            raise NotShapesFolder(f"{out_dir}: exists and is not an empty folder or a shapes dataset; "
                                  f"refusing to replace it (choose another --out)")
        theirs = [] if keep_complete else not_generated(out_dir)  # the cache: detseg's own folder
        if theirs:
            raise NotShapesFolder(f"{out_dir}: a shapes dataset that also holds {len(theirs)} file(s) "
                                  f"the generator did not write ({', '.join(theirs[:3])}); refusing to "
                                  f"replace it (move them, or choose another --out)")
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".shapes-", dir=parent)
    try:
        write = writer or write_split
        write(tmp, "train", num_train, seed, classes, imbalance)
        write(tmp, "val", num_val, seed, classes)
        OutputDir(tmp, TOOL).list_files(complete=True)  # what a later replace may delete
        if os.path.exists(out_dir) and not (keep_complete and _complete(split_paths(out_dir))):
            shutil.rmtree(out_dir)
        try:
            os.replace(tmp, out_dir)  # fails onto a folder that is not empty
        except OSError:
            if not (keep_complete and _complete(split_paths(out_dir))):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # still there unless it was renamed into place
    return split_paths(out_dir)


def split_paths(root: str) -> dict:
    paths = {s: {"ann_file": os.path.join(root, "annotations", f"instances_{s}.json"),
                 "image_dir": os.path.join(root, s)} for s in ("train", "val")}
    for s, p in paths.items():
        pan = os.path.join(root, "annotations", f"panoptic_{s}.json")
        if os.path.isfile(pan):
            p.update(panoptic_paths(pan))
    return paths


def ensure_shapes(seed: int = 0, num_train: int = 300, num_val: int = 60,
                  cache_dir: Optional[str] = None, classes=None, imbalance: float = 1.0,
                  writer: Optional[Callable] = None, variant: str = "shapes") -> dict:
    """Generate the shapes dataset into the cache on first use; reuse it afterwards. ``writer``
    and ``variant``: another variant's split writer (``generate``) and the name its cache folders
    start with."""
    classes = check_classes(classes)
    name = f"{variant}_v{FORMAT_VERSION}_seed{seed}_{num_train}_{num_val}"
    if classes != CLASSES:
        name += "_" + "-".join(classes)
    if imbalance > 1:
        name += f"_longtail{imbalance:g}"
    root = os.path.join(cache_dir or default_cache_dir(), name)
    paths = split_paths(root)
    if not _complete(paths):
        # two processes on a fresh cache (two trainings, two test workers) may both build it
        generate(root, seed, num_train, num_val, classes, keep_complete=True, imbalance=imbalance,
                 writer=writer)
        paths = split_paths(root)  # a writer's extra files (the panoptic JSONs) are listed now
    return paths


def _complete(paths: dict) -> bool:
    return all(os.path.isfile(p["ann_file"]) for p in paths.values())


# --------------------------------------------------------------------------- classification split

CLASSIFY_FORMAT_VERSION = 2  # 2: a long-tailed train split holds every class


def render_single(seed: int, split: str, index: int, classes: tuple[str, ...] = CLASSES,
                  size: int = 64, weights: Optional[np.ndarray] = None) -> tuple[np.ndarray, int]:
    """One ``size x size`` image of a single shape, for the classification split: the detection
    images' backgrounds, colours and shapes, the shape filling 60-90% of the image's width and
    off-centre by up to a tenth of it. Classes take turns (``index % K``), so each split is
    balanced; with ``weights`` (``long_tail_weights``) the class is drawn with those
    probabilities instead, from a stream of its own (the drawing's stream is unchanged), after
    the first K images, which hold one class each: however short the tail, no class is empty
    (an empty class folder is not a dataset).

    Returns:
        (image ``np.ndarray[size, size, 3]`` uint8 RGB, label).
    """
    rng = np.random.default_rng([seed, _SPLIT_SALT[split], index, 7])
    label = index % len(classes)
    if weights is not None and index >= len(classes):
        label = int(np.random.default_rng([seed, _SPLIT_SALT[split], index, 11]).choice(len(classes), p=weights))
    image = _background(rng, size, size)
    r = rng.uniform(0.3, 0.45) * size
    cx, cy = size / 2 + rng.uniform(-0.1, 0.1) * size, size / 2 + rng.uniform(-0.1, 0.1) * size
    m = np.zeros((size, size), dtype=np.uint8)
    cv2.fillPoly(m, [_shape_polygon(rng, classes[label], cx, cy, r)], 1)
    colour = rng.integers(0, 256, size=3)
    shade = np.clip(colour + rng.normal(0, 6, size=(size, size, 3)), 0, 255).astype(np.uint8)
    image[m > 0] = shade[m > 0]
    return image, label


def ensure_shapes_classes(seed: int = 0, num_train: int = 300, num_val: int = 60,
                          cache_dir: Optional[str] = None, classes=None, size: int = 64,
                          imbalance: float = 1.0) -> dict:
    """The shapes classification split in the cache (written on first use, in the
    folder-per-class layout): ``{"train": {"ann_file": None, "image_dir": root/train}, "val": ...}``.
    ``imbalance`` > 1: the train split's classes long-tailed as the detection split's are (the
    first class that many times as frequent as the last), val balanced."""
    from .class_folders import ensure_class_folders
    classes = check_classes(classes)
    name = f"shapes_cls_v{CLASSIFY_FORMAT_VERSION}_seed{seed}_{num_train}_{num_val}_{size}px"
    if classes != CLASSES:
        name += "_" + "-".join(classes)
    if imbalance > 1:
        name += f"_lt{imbalance:g}"
    weights = long_tail_weights(len(classes), imbalance)

    def samples(split: str):
        for i in range(num_train if split == "train" else num_val):
            image, label = render_single(seed, split, i, classes, size, weights if split == "train" else None)
            yield f"{i:06d}.png", classes[label], image

    return ensure_class_folders(os.path.join(cache_dir or default_cache_dir(), name), classes, samples)
