"""Conventions and small structures shared across data, heads and evaluation.

Boxes are float32 ``(x1, y1, x2, y2)`` in absolute pixels (ARCHITECTURE.md, "Conventions").
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import torch
from torch import Tensor

# Semantic maps: 0 background, k + 1 for class k, and this value where a pixel is ignored
# (crowd regions, batch padding); losses and metrics skip it.
SEMANTIC_IGNORE = 255


class Instances:
    """Detections of one image; every field has the same length ``N``.

    Args:
        image_size: (H, W) of the image the boxes refer to.
        boxes: ``Tensor[N, 4]`` xyxy; scores: ``Tensor[N]``; labels: ``Tensor[N]`` int64 in
            ``0..K-1``; masks (optional): ``Tensor[N, H, W]`` bool/uint8 or ``[N, M, M]`` logits.
        logits (optional): ``Tensor[N]``, each detection's class score before the softmax (or
            sigmoid) that made ``scores``: what Grad-CAM explains (``detseg.explain.saliency``).
    """

    def __init__(self, image_size: tuple[int, int], boxes: Tensor, scores: Tensor, labels: Tensor,
                 masks: Optional[Tensor] = None, logits: Optional[Tensor] = None):
        n = boxes.shape[0]
        if boxes.dim() != 2 or boxes.shape[1] != 4:
            raise ValueError(f"boxes must be [N, 4], got {tuple(boxes.shape)}")
        for name, t in (("scores", scores), ("labels", labels), ("masks", masks), ("logits", logits)):
            if t is not None and t.shape[0] != n:
                raise ValueError(f"Instances: {name} has {t.shape[0]} entries, boxes have {n}")
        self.image_size = (as_size(image_size[0]), as_size(image_size[1]))
        self.boxes, self.scores, self.labels, self.masks = boxes, scores, labels, masks
        self.logits = logits

    def __len__(self) -> int:
        return self.boxes.shape[0]

    def _with(self, image_size, boxes, pick) -> "Instances":
        """A copy with new ``boxes`` (and size), every other field passed through ``pick``."""
        return Instances(image_size, boxes, pick(self.scores), pick(self.labels),
                         *(None if t is None else pick(t) for t in (self.masks, self.logits)))

    def __getitem__(self, idx) -> "Instances":
        return self._with(self.image_size, self.boxes[idx], lambda t: t[idx])

    def to(self, device) -> "Instances":
        return self._with(self.image_size, self.boxes.to(device), lambda t: t.to(device))

    def scale(self, sx: float, sy: float, image_size: tuple[int, int]) -> "Instances":
        """Boxes scaled to another resolution of the same image (masks are left to the caller)."""
        f = torch.tensor([sx, sy, sx, sy], dtype=self.boxes.dtype, device=self.boxes.device)
        return self._with(image_size, self.boxes * f, lambda t: t)

    def __repr__(self) -> str:
        return f"Instances(num={len(self)}, image_size={self.image_size}, masks={self.masks is not None})"


def as_size(value) -> Union[int, torch.SymInt]:
    """``int(value)``, except that a symbolic size (``torch.export`` tracing) stays symbolic:
    ``int()`` would bake the example image's size into the exported graph."""
    return value if isinstance(value, torch.SymInt) else int(value)


def clip_boxes(boxes: Tensor, image_size: tuple[int, int]) -> Tensor:
    """Clip ``Tensor[N, 4]`` xyxy boxes to an (H, W) image."""
    h, w = image_size
    return torch.stack([boxes[:, 0].clamp(0, w), boxes[:, 1].clamp(0, h),
                        boxes[:, 2].clamp(0, w), boxes[:, 3].clamp(0, h)], dim=1)


def nonempty(boxes: Tensor, min_size: float = 0.0) -> Tensor:
    """``Tensor[N]`` bool: boxes wider and taller than ``min_size``."""
    return ((boxes[:, 2] - boxes[:, 0]) > min_size) & ((boxes[:, 3] - boxes[:, 1]) > min_size)


@dataclass
class Batch:
    """A collated batch (``detseg.data.transforms.collate``): what every head reads.

    Fields:
        images: uint8 ``[B, 3, Hp, Wp]``, zero-padded bottom / right.
        image_sizes: per image (h, w) before padding (after the data pipeline's resize).
        orig_sizes: per image, the file's (h, w).
        image_ids: per image, its dataset id.
        targets: per image ``{"boxes" [N, 4], "labels" [N], "ignore_boxes" [M, 4], "masks"
            [N, h, w]}`` (the keys the dataset provides).
        semantic: uint8 ``[B, Hp, Wp]`` class maps (255 = ignore), when the heads need them.
        labels: int64 ``[B]`` one class per image (classification data).
        proposals: per image ``Tensor[P, 4]`` precomputed proposals, when the heads read them.
        pixels: the normalised float images ``[B, 3, H, W]`` ``Model`` adds (after an in-model
            resize, if any: then ``image_sizes`` are the resized sizes too).
        num_skipped: samples the dataset skipped (unreadable, with ``on_bad_image: skip``).

    Read as a mapping too (``batch["images"]``, ``batch.get("proposals")``, ``"semantic" in
    batch``: a field that is None counts as absent), so code written for the plain dict batch
    keeps working; ``Batch.of`` turns such a dict into a ``Batch``.
    """

    images: Tensor
    image_sizes: list = field(default_factory=list)
    orig_sizes: list = field(default_factory=list)
    image_ids: list = field(default_factory=list)
    targets: list = field(default_factory=list)
    semantic: Optional[Tensor] = None
    labels: Optional[Tensor] = None
    proposals: Optional[list] = None
    pixels: Optional[Tensor] = None
    num_skipped: int = 0

    @classmethod
    def of(cls, batch: Union["Batch", dict]) -> "Batch":
        """``batch`` itself, or the ``Batch`` of a dict with these keys (missing ones default:
        ``image_sizes`` and ``orig_sizes`` to the padded size); an unknown key is an error."""
        if isinstance(batch, Batch):
            return batch
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(batch) - names
        if unknown:
            raise KeyError(f"unknown batch keys {sorted(unknown)}; a batch has {sorted(names)}")
        out = cls(**batch)
        if not out.image_sizes:
            out.image_sizes = [tuple(out.images.shape[-2:])] * len(out.images)
        if not out.orig_sizes:
            out.orig_sizes = list(out.image_sizes)
        return out

    def replace(self, **changes: Any) -> "Batch":
        return dataclasses.replace(self, **changes)

    @property
    def padded_hw(self) -> tuple[int, int]:
        """(H, W) of the padded images the backbone sees: ``pixels`` once ``Model`` has made them
        (an in-model resize changes it), else ``images``."""
        return tuple((self.pixels if self.pixels is not None else self.images).shape[-2:])

    # -- mapping-style reads, for code written against the dict batch ----------------------------
    def __getitem__(self, key: str) -> Any:
        value = getattr(self, key, None) if key in self._names() else None
        if value is None:
            raise KeyError(key)
        return value

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key in self._names() and getattr(self, key) is not None

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in self else default

    def keys(self) -> list[str]:
        return [n for n in self._names() if n in self]

    @classmethod
    def _names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))
