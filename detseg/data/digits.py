"""Real handwriting for LeNet's own task: the 8 x 8 digits that scikit-learn ships inside its
package (``sklearn.datasets.load_digits``: 1,797 scans from 43 writers, UCI's "Optical
Recognition of Handwritten Digits"; no download), upsampled to 32 x 32 as LeNet-5's input, dark
ink on white, written once into the cache in the folder-per-class layout.

Split: every fourth image (index % 4 == 0) is val (450 images), the rest train (1,347), a fixed
split so that accuracies are comparable between runs.
"""
from __future__ import annotations

import os
from typing import Optional

import cv2
import numpy as np

from ..utils import default_cache_dir
from .io import DataError

FORMAT_VERSION = 1
CLASSES = tuple(str(d) for d in range(10))


def digit_image(pixels: np.ndarray, size: int = 32) -> np.ndarray:
    """One 8 x 8 scan (values 0..16, ink) as ``np.ndarray[size, size, 3]`` uint8 RGB."""
    gray = (255 - pixels.reshape(8, 8).astype(np.float32) * (255 / 16)).astype(np.uint8)
    big = cv2.resize(gray, (size, size), interpolation=cv2.INTER_LINEAR)
    return np.repeat(big[:, :, None], 3, axis=2)


def ensure_digits(cache_dir: Optional[str] = None, size: int = 32) -> dict:
    """The digits in the cache: ``{"train": {"ann_file": None, "image_dir"}, "val": {...}}``."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError("the built-in digits come with scikit-learn: pip install scikit-learn") from None
    from .class_folders import ensure_class_folders
    root = os.path.join(cache_dir or default_cache_dir(), f"digits_v{FORMAT_VERSION}_{size}px")

    def samples(split: str):
        digits = load_digits()
        for i, (pixels, target) in enumerate(zip(digits.data, digits.target)):
            if (i % 4 == 0) == (split == "val"):
                yield f"{i:04d}.png", CLASSES[int(target)], digit_image(pixels, size)

    return ensure_class_folders(root, CLASSES, samples)
