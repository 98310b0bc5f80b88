"""One image (an array, a tensor or a file path) made into a sample for ``collate``: what the
predictors (eager and exported) and export's static-size example share."""
from __future__ import annotations

import os
from typing import Union

import numpy as np
import torch

from .io import read_image

ImageLike = Union[np.ndarray, torch.Tensor, str, os.PathLike]


def prepare_image(image: ImageLike, transform, index: int, proposals=None) -> dict:
    """A sample for ``collate`` from an image (array, tensor or path) through ``transform`` (the
    data pipeline's eval resize, or None): ``image`` uint8 ``[3, h, w]`` and the file's ``orig_size``;
    ``proposals`` (``[P, 4]`` in the file's pixels) are resized with the image.

    Raises:
        ValueError: not an RGB uint8 image; DataError: an unreadable file.
    """
    if isinstance(image, (str, os.PathLike)):
        image = read_image(image)
    if isinstance(image, torch.Tensor):  # [3, H, W] or [H, W, 3] uint8
        image = image.permute(1, 2, 0).numpy() if image.shape[0] == 3 else image.numpy()
    image = np.ascontiguousarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 image [H, W, 3], got {image.dtype} {image.shape}")
    h, w = image.shape[:2]
    s = {"image": image, "boxes": np.zeros((0, 4), np.float32), "labels": np.zeros(0, np.int64),
         "ignore_boxes": np.zeros((0, 4), np.float32)}
    if proposals is not None:
        s["proposals"] = np.asarray(proposals, dtype=np.float32).reshape(-1, 4)
    if transform is not None:
        s = transform(s)
    out = {"image": torch.from_numpy(np.ascontiguousarray(s["image"].transpose(2, 0, 1))),
           "boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long),
           "ignore_boxes": torch.zeros(0, 4), "image_id": index, "orig_size": (h, w)}
    if proposals is not None:
        out["proposals"] = torch.from_numpy(s["proposals"])
    return out
