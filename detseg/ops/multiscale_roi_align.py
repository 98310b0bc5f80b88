"""RoIAlign over an FPN pyramid: each box pooled from the level its size picks (FPN, eq. 1).

Same constructor, call and result as ``torchvision.ops.MultiScaleRoIAlign``, on detseg's
``roi_align``.
"""
from __future__ import annotations

import math
from typing import Sequence, Union

import torch
from torch import Tensor, nn

from ._ext import compute_dtype
from ._rois import pair, roi_tensor
from .roi_align import roi_align


def feature_scale(feature_size: Sequence[int], image_size: Sequence[int]) -> float:
    """The power of two closest to ``feature / image`` size (on the height axis, as torchvision).

    Under ``torch.export`` the sizes are symbolic; the scale (the level's stride) is the same for
    every image, so the example's sizes decide it without tying the graph to them.
    """
    f, i = (_concrete(v) for v in (feature_size[0], image_size[0]))
    return 2.0 ** round(math.log2(float(f) / float(i)))


def _concrete(size) -> int:
    if isinstance(size, torch.SymInt):
        from torch.fx.experimental.symbolic_shapes import guarding_hint_or_throw
        return guarding_hint_or_throw(size)  # the example's value, without a guard on it
    return int(size)


def fpn_levels(boxes: Tensor, k_min: int, k_max: int, canonical_scale: float = 224,
               canonical_level: int = 4, eps: float = 1e-6) -> Tensor:
    """Pyramid level of each box: ``floor(k0 + log2(sqrt(area) / s0))`` clamped to ``[k_min,
    k_max]``, returned as an index from ``k_min`` (``int64 Tensor[K]``).

    Args:
        boxes: ``Tensor[K, 4]`` (x1, y1, x2, y2) in image pixels.
    """
    side = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    level = torch.floor(canonical_level + torch.log2(side / canonical_scale)
                        + torch.tensor(eps, dtype=side.dtype))
    return level.clamp(min=k_min, max=k_max).to(torch.int64) - k_min


class MultiScaleRoIAlign(nn.Module):
    """RoIAlign from the pyramid level each box's size selects.

    Args:
        featmap_names: the feature-dict keys of the levels, finest first.
        output_size: ``int`` or ``(h, w)``.
        sampling_ratio: RoIAlign samples per bin and axis (``<= 0``: adaptive).
        canonical_scale, canonical_level: FPN's ``224`` and ``k0 = 4``.
        aligned: RoIAlign's half-pixel shift (False in torchvision's detectors).
    """

    def __init__(self, featmap_names: Sequence[str], output_size: Union[int, tuple[int, int]],
                 sampling_ratio: int, *, canonical_scale: int = 224, canonical_level: int = 4,
                 aligned: bool = False):
        super().__init__()
        if not featmap_names:
            raise ValueError("MultiScaleRoIAlign needs at least one feature map name")
        self.featmap_names = list(featmap_names)
        self.output_size = pair(output_size)
        self.sampling_ratio = sampling_ratio
        self.canonical_scale = canonical_scale
        self.canonical_level = canonical_level
        self.aligned = aligned

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor],
                image_shapes: list[tuple[int, int]]) -> Tensor:
        """Pooled ``Tensor[sum K_i, C, h, w]`` for per-image ``boxes`` ``Tensor[K_i, 4]``;
        ``image_shapes``: each image's (h, w) before batch padding."""
        if not image_shapes:
            raise ValueError("MultiScaleRoIAlign needs the image shapes")
        maps = [x[name] for name in self.featmap_names]
        largest = (max(s[0] for s in image_shapes), max(s[1] for s in image_shapes))
        scales = [feature_scale(m.shape[-2:], largest) for m in maps]
        # Box coordinates stay float32 (float64 with a float64 map), whatever autocast made the maps.
        rois = roi_tensor(boxes, compute_dtype(maps[0].dtype), maps[0].device)
        if len(maps) == 1:
            return roi_align(maps[0], rois, self.output_size, scales[0], self.sampling_ratio,
                             self.aligned)
        k_min, k_max = int(-math.log2(scales[0])), int(-math.log2(scales[-1]))
        levels = fpn_levels(rois[:, 1:], k_min, k_max, self.canonical_scale, self.canonical_level)
        out = maps[0].new_zeros((rois.shape[0], maps[0].shape[1]) + self.output_size)
        for level, (fmap, scale) in enumerate(zip(maps, scales)):
            idx = torch.where(levels == level)[0]
            pooled = roi_align(fmap, rois[idx], self.output_size, scale, self.sampling_ratio,
                               self.aligned)
            # Under autocast the levels may differ in dtype; the result keeps the first level's.
            out[idx] = pooled.to(out.dtype)
        return out

    def extra_repr(self) -> str:
        return (f"featmap_names={self.featmap_names}, output_size={self.output_size}, "
                f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}")
