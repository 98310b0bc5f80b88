"""SPPNet / Fast R-CNN head (He et al. 2014; Girshick 2015): one backbone pass, every proposal
pooled from the shared feature map, then fc layers, softmax and class-specific box regression.

``levels=(6, 3, 2, 1)`` with the SPPNet coordinate mapping is SPPNet; ``levels=(7,)`` with
``mapping="fast_rcnn"`` is Fast R-CNN's RoI pooling; with an RPN as the proposal source it is
Faster R-CNN.
"""
from __future__ import annotations

from typing import Optional, Sequence

from torch import Tensor, nn

from ...ops.roi_pool import SpatialPyramidPool
from ..backbones import ShapeSpec
from .region import RegionHead


class SPPHead(RegionHead):
    """Region head on spatial-pyramid pooled features.

    Args (keyword-only):
        in_shapes: ``backbone.output_shape()``.
        feature: which feature map to pool (default: the coarsest).
        levels: pyramid sizes; mapping: ``"sppnet"`` or ``"fast_rcnn"``.
        proposals, num_classes and the rest: see ``RegionHead``.
    """

    def __init__(self, *, in_shapes: dict[str, ShapeSpec], proposals: nn.Module, num_classes: int,
                 feature: Optional[str] = None, levels: Sequence[int] = (6, 3, 2, 1),
                 mapping: str = "sppnet", **kwargs):
        feature = feature or max(in_shapes, key=lambda n: in_shapes[n].stride)
        if feature not in in_shapes:
            raise ValueError(f"SPP head: backbone has no feature {feature!r}; it has {sorted(in_shapes)}")
        spec = in_shapes[feature]
        pool = SpatialPyramidPool(levels, 1.0 / spec.stride, mapping)
        super().__init__(proposals=proposals, num_classes=num_classes,
                         in_features=pool.out_features(spec.channels), **kwargs)
        self.feature = feature
        self.pool = pool

    def region_features(self, features: dict, batch: dict, boxes: list[Tensor], **kwargs) -> Tensor:
        """Pooled ``Tensor[sum R_i, C * sum(l * l)]``."""
        fmap = features[self.feature]
        return self.pool(fmap.contiguous(), [b.to(fmap.dtype) for b in boxes])
