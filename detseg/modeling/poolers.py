"""Region poolers: each box of an image becomes one feature vector pooled from the shared backbone
maps. A region head is given one, built from its ``pooler`` section:

- ``{type: spp, levels: [6, 3, 2, 1], mapping: sppnet}``: SPPNet's spatial pyramid (He et al. 2014);
- ``{type: roi_pool, output_size: 7}``: Fast R-CNN's RoI max pooling, its rounding (one pyramid
  level: Girshick 2015);
- ``{type: roi_align, output_size: 7, sampling_ratio: 2, aligned: false, features: [p2, p3]}``:
  Mask R-CNN's bilinear RoIAlign, from one map or, with ``features``, from the FPN level each box's
  size picks (FPN's level mapping, as torchvision's ``MultiScaleRoIAlign``).

Each section has only the keys that mean something for its type; the config loader refuses any
other key, naming it, its file and the pooler type.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional, Sequence

from torch import Tensor, nn

from ..config import ConfigError, Tagged, ranged
from ..ops import MultiScaleRoIAlign, SpatialPyramidPool
from ..structures import as_size
from .backbones import ShapeSpec


@dataclass
class SPPPoolerConfig:
    """SPPNet's spatial pyramid on the head's ``feature`` map."""

    type: Literal["spp"] = "spp"
    levels: list[int] = ranged([6, 3, 2, 1], ge=1)  # n x n bins per pyramid level
    # how a box's image coordinates become feature cells: SPPNet's (its paper's rounding) or
    # Fast R-CNN's (round(x * scale)), which with one level is exactly roi_pool
    mapping: Literal["sppnet", "fast_rcnn"] = "sppnet"


@dataclass
class RoIPoolConfig:
    """Fast R-CNN's RoI max pooling on the head's ``feature`` map."""

    type: Literal["roi_pool"] = "roi_pool"
    output_size: int = ranged(7, ge=1)


@dataclass
class RoIAlignConfig:
    """Mask R-CNN's RoIAlign: from the head's ``feature`` map, or from one of ``features`` (FPN
    levels) chosen by each box's size."""

    type: Literal["roi_align"] = "roi_align"
    output_size: int = ranged(7, ge=1)
    sampling_ratio: int = ranged(2, ge=0)  # bilinear samples per bin and axis; 0: adaptive
    aligned: bool = False  # half-pixel shift (detectron2's ROIAlignV2)
    features: Optional[list[str]] = None


POOLER_CONFIGS: dict[str, type] = {"spp": SPPPoolerConfig, "roi_pool": RoIPoolConfig,
                                   "roi_align": RoIAlignConfig}


class PoolerConfig(Tagged):
    """Schema marker: a ``pooler`` section, the dataclass its ``type`` names."""

    options = POOLER_CONFIGS
    what = "pooler"


class MapPooler(nn.Module):
    """SPP or RoI max pooling of one feature map.

    Args:
        pool: ``SpatialPyramidPool`` (its scale set to 1 / the map's stride).
        feature: the map's name; channels: its channel count.

    ``forward(features, boxes, image_sizes)``: per image ``Tensor[R_i, 4]`` boxes in image
    pixels -> ``Tensor[sum R_i, out_features]``.
    """

    def __init__(self, pool: SpatialPyramidPool, feature: str, channels: int):
        super().__init__()
        self.pool, self.feature = pool, feature
        self.features = [feature]
        self.out_features = pool.out_features(channels)

    def forward(self, features: dict[str, Tensor], boxes: list[Tensor], image_sizes) -> Tensor:
        fmap = features[self.feature]
        return self.pool(fmap.contiguous(), [b.to(fmap.dtype) for b in boxes])


class AlignPooler(nn.Module):
    """RoIAlign from one map or from the FPN level each box's size picks; each map's scale is
    inferred from its size against the padded image's.

    ``forward(features, boxes, image_sizes)`` -> ``Tensor[sum R_i, C * output_size ** 2]``.
    """

    def __init__(self, features: Sequence[str], channels: int, output_size: int, sampling_ratio: int,
                 aligned: bool):
        super().__init__()
        self.features = list(features)
        self.feature = self.features[0]
        self.pool = MultiScaleRoIAlign(self.features, output_size, sampling_ratio, aligned=aligned)
        self.out_features = channels * output_size * output_size

    def forward(self, features: dict[str, Tensor], boxes: list[Tensor], image_sizes) -> Tensor:
        sizes = [tuple(as_size(v) for v in hw) for hw in image_sizes]
        return self.pool(features, boxes, sizes).flatten(1)


def pooler_features(settings, feature: Optional[str]) -> list[str]:
    """The maps a pooler section reads: its own ``features`` (roi_align), else ``[feature]``."""
    return list(getattr(settings, "features", None) or [feature])


def build_pooler(settings, in_shapes: dict[str, ShapeSpec], feature: str) -> nn.Module:
    """The pooler a ``pooler`` section describes, reading ``feature`` unless it names its own maps.

    Raises:
        ValueError: naming the maps the backbone lacks. ConfigError: a one-level SPP with Fast
            R-CNN's mapping, which is RoI pooling: one method, one way to write it.
    """
    names = pooler_features(settings, feature)
    unknown = [n for n in names if n not in in_shapes]
    if unknown:
        raise ValueError(f"{settings.type} pooler: backbone has no features {unknown}; it has "
                         f"{sorted(in_shapes)}")
    spec = in_shapes[names[0]]
    if settings.type == "roi_align":
        return AlignPooler(names, spec.channels, settings.output_size, settings.sampling_ratio,
                           settings.aligned)
    if settings.type == "roi_pool":
        pool = SpatialPyramidPool([settings.output_size], 1.0 / spec.stride, "fast_rcnn")
    elif settings.type == "spp":
        if len(settings.levels) == 1 and settings.mapping == "fast_rcnn":
            raise ConfigError(f"pooler {{type: spp, levels: {settings.levels}, mapping: fast_rcnn}} is "
                              f"Fast R-CNN's RoI pooling: write {{type: roi_pool, output_size: "
                              f"{settings.levels[0]}}}")
        pool = SpatialPyramidPool(settings.levels, 1.0 / spec.stride, settings.mapping)
    else:
        raise ValueError(f"unknown pooler type {settings.type!r}; one of {', '.join(POOLER_CONFIGS)}")
    return MapPooler(pool, names[0], spec.channels)
