"""R-CNN head (Girshick et al. 2014): every proposal cropped from the image with context padding,
warped to a fixed size, run through the shared backbone, then fc layers; softmax or per-class
linear SVM classification and class-specific box regression.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...config import ranged
from ...ops import roi_align
from ..backbones import ShapeSpec, coarsest, run_until
from ..proposals import build_proposals
from .region import ProposalHeadConfig, RegionHead


@dataclass
class RCNNHeadConfig(ProposalHeadConfig):
    """R-CNN (``type: rcnn``): each proposal warped to a fixed size and run through the backbone."""

    type: Literal["rcnn"] = "rcnn"
    warp_size: int = ranged(224, ge=1)
    context_pad: int = ranged(16, ge=0)
    pool_size: int = ranged(6, ge=1)
    crop_batch_size: int = ranged(256, ge=1)  # crops per backbone call (bounds memory)


def context_boxes(boxes: Tensor, warp_size: int, context_pad: int) -> Tensor:
    """Enlarge boxes about their centres so that, once warped to ``warp_size``, the original box
    fills the middle with exactly ``context_pad`` warped pixels of context on every side."""
    if context_pad <= 0:
        return boxes
    scale = warp_size / (warp_size - 2 * context_pad)
    c = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]) / 2 * scale
    return torch.cat([c - half, c + half], dim=1)


def warp_regions(pixels: Tensor, image_sizes, boxes: list[Tensor], warp_size: int,
                 context_pad: int) -> Tensor:
    """Anisotropically warp each (context-enlarged) box to ``warp_size x warp_size``.

    Args:
        pixels: normalised images ``Tensor[B, 3, H, W]``; outside each image's own size (batch
            padding, or beyond the border) counts as the mean pixel, i.e. 0 after normalisation.
        image_sizes: (h, w) of each image before padding.
        boxes: per-image ``Tensor[R_i, 4]``.

    Returns:
        ``Tensor[sum R_i, 3, warp_size, warp_size]``.
    """
    h_pad, w_pad = pixels.shape[-2:]
    ys = torch.arange(h_pad, device=pixels.device)[:, None]
    xs = torch.arange(w_pad, device=pixels.device)[None, :]
    valid = torch.stack([(ys < h) & (xs < w) for h, w in image_sizes])[:, None]
    pixels = pixels * valid
    rois = [context_boxes(b.to(pixels.dtype), warp_size, context_pad) for b in boxes]
    # Bilinear sampling; 2 samples per output pixel and axis is enough for the shrinking warps
    # that dominate, and zero outside the image is exactly the mean fill R-CNN uses.
    return roi_align(pixels, rois, (warp_size, warp_size), spatial_scale=1.0, sampling_ratio=2,
                     aligned=True)


class RCNNHead(RegionHead):
    """Region head that runs the backbone on warped crops, in place of a pooler.

    Args (keyword-only):
        in_shapes: ``backbone.output_shape()``.
        feature: backbone output used for each crop (default: the coarsest).
        warp_size: crop size fed to the CNN (the paper: 227).
        context_pad: warped pixels of context around each box (the paper: 16).
        pool_size: the crop's feature map is max-pooled to ``pool_size x pool_size`` (pool5).
        crop_batch_size: crops per backbone call (bounds memory).

    Needs the backbone itself: ``forward_train/forward_test(features, batch, backbone=...)``
    with ``batch.pixels`` the normalised images (``Model`` passes both).
    """

    uses_backbone = True
    needs_features = False
    config_class = RCNNHeadConfig
    # and RegionHead's pooler / in_features / mask_head, which R-CNN sets itself (no pooler, no mask)
    built_arguments = ("in_shapes", "proposals", "num_classes", "box_coder", "pooler", "in_features",
                       "mask_head")
    consumed_settings = ("proposals",)

    @classmethod
    def from_config(cls, settings: RCNNHeadConfig, backbone: nn.Module, num_classes: int) -> "RCNNHead":
        shapes = backbone.output_shape()
        feature = settings.feature or coarsest(shapes)
        if feature not in shapes:
            raise ValueError(f"R-CNN head: backbone has no feature {feature!r}; it has {sorted(shapes)}")
        return cls(in_shapes=shapes, proposals=build_proposals(settings.proposals, shapes, feature),
                   num_classes=num_classes, **{**cls.settings_kwargs(settings), "feature": feature})

    @classmethod
    def predicts_masks_for(cls, settings: RCNNHeadConfig) -> bool:
        return False

    def __init__(self, *, in_shapes: dict[str, ShapeSpec], proposals: nn.Module, num_classes: int,
                 feature: Optional[str] = None, warp_size: int = 224, context_pad: int = 16,
                 pool_size: int = 6, crop_batch_size: int = 256, **kwargs):
        feature = feature or coarsest(in_shapes)
        if feature not in in_shapes:
            raise ValueError(f"R-CNN head: backbone has no feature {feature!r}; it has {sorted(in_shapes)}")
        super().__init__(proposals=proposals, num_classes=num_classes,
                         in_features=in_shapes[feature].channels * pool_size ** 2, **kwargs)
        self.feature, self.warp_size, self.context_pad = feature, warp_size, context_pad
        self.pool_size, self.crop_batch_size = pool_size, crop_batch_size

    def region_features(self, features, batch, boxes: list[Tensor], *,
                        backbone: nn.Module = None) -> Tensor:
        if backbone is None:
            raise TypeError("RCNNHead needs the backbone: call it with backbone=...")
        crops = warp_regions(batch.pixels, batch.image_sizes, boxes, self.warp_size,
                             self.context_pad)
        out = []
        # An exported graph runs every crop in one batch: the number of chunks would depend on the
        # proposal count, which the graph does not fix (its memory grows with the proposals given).
        chunks = [crops] if self.exporting else crops.split(self.crop_batch_size)
        for chunk in chunks:
            fmap = run_until(backbone, chunk, self.feature)
            out.append(F.adaptive_max_pool2d(fmap, self.pool_size).flatten(1))
        return torch.cat(out) if out else crops.new_zeros(0, self.in_features)
