"""The per-dataset selective-search cache that ``tools/proposals.py`` writes and the data loader
reads: R-CNN and SPPNet precompute proposals once, as their authors did, and look them up by
image id during training. The algorithm itself is ``detseg.modeling.proposals.selective_search``.

Cache file: a ``.npz`` (read with ``allow_pickle=False``) holding ``image_ids [N]``,
``offsets [N + 1]`` and ``boxes [T, 4]`` float32 xyxy in the original image's pixels, plus
``mode`` and ``max_proposals``.
"""
from __future__ import annotations

import os
from typing import Optional

import cv2
import numpy as np

from ..modeling.proposals.selective_search import selective_search
from ..utils import atomic_write
from .coco import load_coco
from .io import read_image


class ProposalError(RuntimeError):
    """A proposal cache is missing, unreadable or does not cover the images asked for."""


def save_cache(path: str, proposals: dict[int, np.ndarray], mode: str, max_proposals: int) -> None:
    """Write ``{image_id: boxes [P, 4]}`` atomically (temp file in the same folder, then rename)."""
    ids = np.asarray(sorted(proposals), dtype=np.int64)
    counts = [len(proposals[int(i)]) for i in ids]
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    boxes = (np.concatenate([proposals[int(i)] for i in ids]) if len(ids)
             else np.zeros((0, 4))).astype(np.float32).reshape(-1, 4)
    with atomic_write(path) as f:
        np.savez(f, image_ids=ids, offsets=offsets, boxes=boxes, mode=np.asarray(mode),
                 max_proposals=np.asarray(max_proposals))


def load_cache(path: str) -> dict[int, np.ndarray]:
    """Read a cache written by ``save_cache``; ``ProposalError`` names the file if it is not one."""
    if not os.path.isfile(path):
        raise ProposalError(f"proposal file not found: {path}; make it with tools/proposals.py")
    try:
        with np.load(path, allow_pickle=False) as z:
            ids, offsets, boxes = z["image_ids"], z["offsets"], z["boxes"]
    except Exception as e:
        raise ProposalError(f"{path}: not a detseg proposal file ({type(e).__name__}: {e})") from None
    if offsets.shape != (len(ids) + 1,) or boxes.ndim != 2 or boxes.shape[1] != 4 \
            or offsets[-1] != len(boxes):
        raise ProposalError(f"{path}: inconsistent proposal arrays (ids {ids.shape}, offsets "
                            f"{offsets.shape}, boxes {boxes.shape})")
    return {int(i): boxes[offsets[k]:offsets[k + 1]] for k, i in enumerate(ids)}


def default_cache_path(ann_file: str, mode: str) -> str:
    """``<annotations folder>/proposals_<ann file stem>_ss_<mode>.npz``, beside the dataset."""
    stem = os.path.splitext(os.path.basename(ann_file))[0]
    return os.path.join(os.path.dirname(os.path.abspath(ann_file)), f"proposals_{stem}_ss_{mode}.npz")


def recall(proposals: dict[int, np.ndarray], gt: dict[int, np.ndarray], iou: float = 0.5) -> float:
    """Fraction of ground-truth boxes covered by some proposal with IoU >= ``iou``."""
    import torch
    from torchvision.ops import box_iou
    hit = total = 0
    for img_id, g in gt.items():
        total += len(g)
        p = proposals.get(img_id)
        if len(g) and p is not None and len(p):
            hit += int((box_iou(torch.as_tensor(g), torch.as_tensor(p)).max(1).values >= iou).sum())
    return hit / total if total else float("nan")


def _one_image(args) -> tuple[int, np.ndarray]:
    img_id, path, mode, max_proposals = args
    cv2.setNumThreads(1)
    return img_id, selective_search(read_image(path), mode, max_proposals)


def compute_for_dataset(ann_file: str, image_dir: str, mode: str = "fast", max_proposals: int = 2000,
                        workers: int = 0, progress: bool = True) -> dict[int, np.ndarray]:
    """Selective search on every image of a COCO-format dataset: ``{image_id: boxes [P, 4]}``."""
    import multiprocessing

    from tqdm import tqdm

    coco = load_coco(ann_file)
    jobs = [(i, os.path.join(image_dir, coco.imgs[i]["file_name"]), mode, max_proposals)
            for i in sorted(coco.getImgIds())]
    bar = tqdm(total=len(jobs), desc=f"selective search ({mode})",
               disable=not progress or os.environ.get("DETSEG_NO_PROGRESS") == "1")
    out: dict[int, np.ndarray] = {}
    if workers > 0:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            for img_id, boxes in pool.imap_unordered(_one_image, jobs, chunksize=4):
                out[img_id] = boxes
                bar.update(1)
    else:
        for job in jobs:
            img_id, boxes = _one_image(job)
            out[img_id] = boxes
            bar.update(1)
    bar.close()
    return out


def ensure_cache(ann_file: str, image_dir: str, path: Optional[str], mode: str, max_proposals: int,
                 workers: int = 0) -> str:
    """The cache file for a split, computed and written first if it does not exist yet."""
    import logging
    path = path or default_cache_path(ann_file, mode)
    if not os.path.isfile(path):
        logging.getLogger(__name__).info("no proposal cache at %s: running selective search once", path)
        save_cache(path, compute_for_dataset(ann_file, image_dir, mode, max_proposals, workers),
                   mode, max_proposals)
    return path
