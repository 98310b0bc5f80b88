"""Built-in classification data written once into the cache, in the folder-per-class layout
that ``detseg.data.classification`` reads (``<root>/<split>/<class>/<file>.png``)."""
from __future__ import annotations

import os
import shutil
import tempfile
from typing import Callable, Iterable, Sequence

import cv2
import numpy as np


def ensure_class_folders(root: str, class_names: Sequence[str],
                         samples: Callable[[str], Iterable[tuple[str, str, np.ndarray]]]) -> dict:
    """Write ``root`` once (built beside it and renamed into place, so that a killed or parallel
    build never leaves a half-written folder in use) and return its splits.

    Args:
        root: the cache folder (its name should change with anything that changes the images).
        class_names: every class (a folder each, even one without images in a split).
        samples: ``split -> [(file name, class name, RGB uint8 image)]``.

    Returns:
        ``{"train": {"ann_file": None, "image_dir": root/train}, "val": {...}}``.
    """
    splits = {s: {"ann_file": None, "image_dir": os.path.join(root, s)} for s in ("train", "val")}
    if os.path.isfile(os.path.join(root, ".complete")):
        return splits
    parent = os.path.dirname(os.path.abspath(root))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".classes-", dir=parent)
    try:
        for split in splits:
            for name in class_names:
                os.makedirs(os.path.join(tmp, split, name), exist_ok=True)
            for file_name, cls, image in samples(split):
                path = os.path.join(tmp, split, cls, file_name)
                if not cv2.imwrite(path, np.ascontiguousarray(image[..., ::-1]),
                                   [cv2.IMWRITE_PNG_COMPRESSION, 3]):
                    raise OSError(f"could not write {path}")
        open(os.path.join(tmp, ".complete"), "w").close()
        try:
            os.replace(tmp, root)
        except OSError:  # another process finished first: keep its folder
            if not os.path.isfile(os.path.join(root, ".complete")):
                shutil.rmtree(root, ignore_errors=True)
                os.replace(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return splits
