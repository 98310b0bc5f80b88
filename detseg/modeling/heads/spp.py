"""SPPNet / Fast R-CNN head (He et al. 2014; Girshick 2015): one backbone pass, every proposal
pooled from the shared feature map, then fc layers, softmax and class-specific box regression.

``levels=(6, 3, 2, 1)`` with the SPPNet coordinate mapping is SPPNet; ``levels=(7,)`` with
``mapping="fast_rcnn"`` is Fast R-CNN's RoI pooling; with an RPN as the proposal source it is
Faster R-CNN.
"""
from __future__ import annotations

from typing import Optional, Sequence

from torch import Tensor, nn
from torchvision.ops import MultiScaleRoIAlign

from ...ops.roi_pool import SpatialPyramidPool
from ..backbones import ShapeSpec, coarsest
from .region import RegionHead


class SPPHead(RegionHead):
    """Region head on spatial-pyramid pooled features.

    Args (keyword-only):
        in_shapes: ``backbone.output_shape()``.
        feature: which feature map to pool (default: the coarsest).
        levels: pyramid sizes; mapping: ``"sppnet"`` or ``"fast_rcnn"``.
        multiscale_features: instead of ``feature``, pool each box from one of these FPN levels
            chosen by its size (FPN's level mapping), with RoIAlign at ``levels[0]`` and
            ``sampling_ratio`` (torchvision's ``MultiScaleRoIAlign``, as its Faster / Mask R-CNN).
        proposals, num_classes and the rest: see ``RegionHead``.
    """

    def __init__(self, *, in_shapes: dict[str, ShapeSpec], proposals: nn.Module, num_classes: int,
                 feature: Optional[str] = None, levels: Sequence[int] = (6, 3, 2, 1),
                 mapping: str = "sppnet", multiscale_features: Optional[Sequence[str]] = None,
                 sampling_ratio: int = 2, **kwargs):
        if multiscale_features:
            unknown = [n for n in multiscale_features if n not in in_shapes]
            if unknown:
                raise ValueError(f"SPP head: backbone has no features {unknown}; it has {sorted(in_shapes)}")
            size = levels[0]
            pool = MultiScaleRoIAlign(list(multiscale_features), size, sampling_ratio)
            width = in_shapes[multiscale_features[0]].channels * size * size
        else:
            feature = feature or coarsest(in_shapes)
            if feature not in in_shapes:
                raise ValueError(f"SPP head: backbone has no feature {feature!r}; it has {sorted(in_shapes)}")
            spec = in_shapes[feature]
            pool = SpatialPyramidPool(levels, 1.0 / spec.stride, mapping)
            width = pool.out_features(spec.channels)
        super().__init__(proposals=proposals, num_classes=num_classes, in_features=width, **kwargs)
        self.feature = feature
        self.multiscale = bool(multiscale_features)
        self.pool = pool

    def region_features(self, features: dict, batch: dict, boxes: list[Tensor], **kwargs) -> Tensor:
        """Pooled ``Tensor[sum R_i, C * sum(l * l)]``."""
        if self.multiscale:
            sizes = [tuple(int(v) for v in hw) for hw in batch["image_sizes"]]
            return self.pool(features, boxes, sizes).flatten(1)
        fmap = features[self.feature]
        return self.pool(fmap.contiguous(), [b.to(fmap.dtype) for b in boxes])
