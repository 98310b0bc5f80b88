"""One image decoder for training and inference.

Every image that enters detseg goes through ``read_image``: EXIF orientation applied, any mode
(gray, gray+alpha, RGBA, palette, 16-bit, 32-bit) turned into RGB uint8, and every failure turned
into a ``DataError`` that names the file.
"""
from __future__ import annotations

import logging
import os
from typing import Optional

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError


class DataError(Exception):
    """Bad input data (image, annotation, video); the message names the file and the item."""


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    """Scale a 16-bit or 32-bit integer / float array to uint8 by its value range."""
    if arr.dtype == np.uint8:
        return arr
    if np.issubdtype(arr.dtype, np.floating):
        # Float images (PIL mode "F") are taken to be in [0, 1] when they fit, else [0, 255].
        scale = 255.0 if arr.size and float(np.nanmax(arr)) <= 1.0 else 1.0
        return np.clip(np.nan_to_num(arr) * scale, 0, 255).round().astype(np.uint8)
    # 16-bit data (also when PIL widens it to 32-bit mode "I"): full range 0..65535 maps to 0..255.
    if arr.size and int(arr.max()) > 255:
        return (np.clip(arr, 0, 65535).astype(np.uint32) * 255 // 65535).astype(np.uint8)
    return np.clip(arr, 0, 255).astype(np.uint8)


def pil_to_rgb(img: Image.Image) -> np.ndarray:
    """Convert a decoded PIL image of any mode to an RGB uint8 array ``[H, W, 3]``.

    Alpha is dropped (not composited): detection datasets store RGBA for the colour, and
    compositing on a made-up background colour would change the pixels the model sees.
    """
    mode = img.mode
    if mode in ("RGB",):
        return np.asarray(img, dtype=np.uint8).copy()
    if mode in ("RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"):
        return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    if mode in ("P", "PA"):
        return np.asarray(img.convert("RGBA").convert("RGB"), dtype=np.uint8).copy()
    if mode in ("L", "LA", "1", "La"):
        gray = np.asarray(img.convert("L"), dtype=np.uint8)
    else:  # "I;16", "I;16B", "I", "F", ...: high-bit-depth gray
        gray = _to_uint8(np.asarray(img))
        if gray.ndim == 3:  # e.g. 16-bit RGB read as a 3-channel array
            return gray[..., :3].copy()
    return np.repeat(gray[..., None], 3, axis=2)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file to RGB uint8, upright according to its EXIF orientation.

    Args:
        path: image file (any format PIL reads: JPEG, PNG, BMP, TIFF, WebP, ...).

    Returns:
        np.ndarray[H, W, 3] uint8, RGB.

    Raises:
        DataError: the file is missing, empty, truncated or not an image; the message names it.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DataError(f"{path}: image file not found")
    if os.path.isdir(path):
        raise DataError(f"{path}: is a directory, not an image")
    if os.path.getsize(path) == 0:
        raise DataError(f"{path}: image file is empty (0 bytes)")
    try:
        with Image.open(path) as img:
            img.load()  # decode now so truncation is caught here, not later
            img = ImageOps.exif_transpose(img)
            return pil_to_rgb(img)
    except UnidentifiedImageError:
        raise DataError(f"{path}: not an image file (format not recognised)") from None
    except Image.DecompressionBombError as e:
        raise DataError(f"{path}: refused: {e}") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: cannot decode image ({e})") from None


def read_image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(height, width) of an image as it will be decoded (EXIF rotation applied), header only."""
    path = os.fspath(path)
    try:
        with Image.open(path) as img:
            w, h = img.size
            orientation = img.getexif().get(0x0112, 1)
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: cannot read image header ({e})") from None
    # Orientations 5..8 swap width and height.
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)


def read_or_skip(path: str, on_bad_image: str, skipped: list, what: str) -> Optional[np.ndarray]:
    """``read_image(path)``; a file that does not decode is, with ``on_bad_image="skip"``, logged,
    added to ``skipped`` and answered with None, else a ``DataError`` naming ``what`` (the item
    and its dataset, e.g. "image id 7 in train.json")."""
    try:
        return read_image(path)
    except DataError as e:
        if on_bad_image == "skip":
            logging.getLogger("detseg.data").warning("skipping %s: %s", what, e)
            skipped.append(path)
            return None
        raise DataError(f"{e} ({what})") from None
