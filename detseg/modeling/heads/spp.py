"""SPPNet / Fast R-CNN head (He et al. 2014; Girshick 2015): one backbone pass, every proposal
pooled from the shared feature map, then fc layers, softmax and class-specific box regression.

The pooler picks the method: ``"spp"`` with ``levels=(6, 3, 2, 1)`` and the SPPNet coordinate
mapping is SPPNet; ``"roi_pool"`` (one ``levels[0] x levels[0]`` level, Fast R-CNN's rounding) is
Fast R-CNN's RoI pooling; ``"roi_align"`` (bilinear, ``levels[0] x levels[0]``, from one map or
from the FPN level each box's size picks) is Mask R-CNN's. With an RPN as the proposal source it is
Faster R-CNN.
"""
from __future__ import annotations

from typing import Optional, Sequence

from torch import Tensor, nn

from ...config import RegionHeadConfig
from ...ops import MultiScaleRoIAlign, SpatialPyramidPool
from ...structures import as_size
from ..backbones import ShapeSpec, coarsest
from ..proposals import build_proposals
from .region import RegionHead


POOLERS = ("spp", "roi_pool", "roi_align")


class SPPHead(RegionHead):
    """Region head on spatial-pyramid pooled features.

    Args (keyword-only):
        in_shapes: ``backbone.output_shape()``.
        feature: which feature map to pool (default: the coarsest).
        pooler: ``"spp"`` (pyramid of ``levels``, coordinate ``mapping`` ``"sppnet"`` or
            ``"fast_rcnn"``), ``"roi_pool"`` (``levels[0]``, Fast R-CNN's mapping) or
            ``"roi_align"`` (``levels[0]``, ``sampling_ratio``, ``aligned``).
        multiscale_features: pool each box with RoIAlign from one of these FPN levels, chosen by
            its size (FPN's level mapping, as torchvision's Faster / Mask R-CNN); implies
            ``pooler="roi_align"``.
        proposals, num_classes and the rest: see ``RegionHead``.
    """

    config_class = RegionHeadConfig

    @classmethod
    def wants_masks(cls, settings: RegionHeadConfig) -> bool:
        return settings.mask is not None

    @classmethod
    def from_config(cls, settings: RegionHeadConfig, backbone: nn.Module, num_classes: int) -> "SPPHead":
        shapes = backbone.output_shape()
        s = settings
        feature = (s.multiscale_features or [None])[0] or s.feature or coarsest(shapes)
        if feature not in shapes:
            raise ValueError(f"region head: backbone has no feature {feature!r}; it has {sorted(shapes)}")
        # The proposal source first, then the mask branch, then this head's own layers: the order
        # the parameters are drawn in (a seeded run initialises them as it always did).
        proposals = build_proposals(s.proposals, shapes, feature)
        mask_head = None
        if s.mask is not None:
            from .mask import MaskHead
            m = s.mask
            mask_head = MaskHead(in_shapes=shapes, num_classes=num_classes, feature=m.feature,
                                 pooler_resolution=m.pooler_resolution, sampling_ratio=m.sampling_ratio,
                                 conv_dims=m.conv_dims, multiscale_features=m.multiscale_features,
                                 rois_per_image=m.rois_per_image)
        return cls(in_shapes=shapes, proposals=proposals,
                   num_classes=num_classes, feature=feature, levels=s.levels, mapping=s.mapping,
                   pooler=s.pooler, multiscale_features=s.multiscale_features,
                   sampling_ratio=s.sampling_ratio, aligned=s.aligned, mask_head=mask_head,
                   **cls.settings_kwargs(s))

    def __init__(self, *, in_shapes: dict[str, ShapeSpec], proposals: nn.Module, num_classes: int,
                 feature: Optional[str] = None, levels: Sequence[int] = (6, 3, 2, 1),
                 mapping: str = "sppnet", pooler: str = "spp",
                 multiscale_features: Optional[Sequence[str]] = None, sampling_ratio: int = 2,
                 aligned: bool = False, **kwargs):
        if pooler not in POOLERS:
            raise ValueError(f"SPP head: pooler must be one of {POOLERS}, got {pooler!r}")
        if multiscale_features:
            pooler = "roi_align"
        names = list(multiscale_features or [feature or coarsest(in_shapes)])
        unknown = [n for n in names if n not in in_shapes]
        if unknown:
            raise ValueError(f"SPP head: backbone has no features {unknown}; it has {sorted(in_shapes)}")
        spec = in_shapes[names[0]]
        if pooler == "roi_align":
            size = levels[0]
            # One map or several: the pooler infers each map's scale from its size.
            pool = MultiScaleRoIAlign(names, size, sampling_ratio, aligned=aligned)
            width = spec.channels * size * size
        else:
            pool = SpatialPyramidPool(levels[:1] if pooler == "roi_pool" else levels, 1.0 / spec.stride,
                                      "fast_rcnn" if pooler == "roi_pool" else mapping)
            width = pool.out_features(spec.channels)
        feature = names[0]
        super().__init__(proposals=proposals, num_classes=num_classes, in_features=width, **kwargs)
        self.feature = feature
        self.multiscale = pooler == "roi_align"
        self.pool = pool

    def region_features(self, features: dict, batch: dict, boxes: list[Tensor], **kwargs) -> Tensor:
        """Pooled ``Tensor[sum R_i, C * sum(l * l)]``."""
        if self.multiscale:
            sizes = [tuple(as_size(v) for v in hw) for hw in batch["image_sizes"]]
            return self.pool(features, boxes, sizes).flatten(1)
        fmap = features[self.feature]
        return self.pool(fmap.contiguous(), [b.to(fmap.dtype) for b in boxes])
