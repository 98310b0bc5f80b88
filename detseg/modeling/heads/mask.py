"""Mask R-CNN's mask branch (He et al. 2017) on region features.

RoIAlign (aligned) of each box at 14 x 14 → four 3x3 conv layers → 2x2 stride-2 transposed conv
→ a 1x1 conv per class → 28 x 28 logits. Trained with per-pixel sigmoid cross entropy on the
ground-truth class's channel only. Attach it to a region head (``RegionHead(mask_head=...)``):
with the RPN and the Fast R-CNN head it is Mask R-CNN; with the SPPNet head, SPPNet + masks.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...config import ranged
from ...ops import MultiScaleRoIAlign, roi_align
from ...structures import Instances, as_size
from ..backbones import ShapeSpec
from ..class_layout import PER_CLASS, DeclaresClassAxes


@dataclass
class MaskConfig:
    """Mask R-CNN's mask branch on a region head's positive RoIs (``mask:`` of a region head)."""

    feature: Optional[str] = None  # default: the stride-16 map
    pooler_resolution: int = ranged(14, ge=1)
    sampling_ratio: int = ranged(2, ge=0)
    conv_dims: list[int] = field(default_factory=lambda: [256, 256, 256, 256])
    multiscale_features: Optional[list[str]] = None  # FPN levels chosen by box size, instead
    # training: at most this many of an image's positive RoIs feed the mask loss, drawn at random
    # (the tower's cost grows with them); null: all of them, as in the paper
    rois_per_image: Optional[int] = ranged(None, ge=1)


def mask_targets(gt_masks: Tensor, matched: Tensor, rois: Tensor, size: int) -> Tensor:
    """Crop each positive RoI's ground-truth mask and resample it to ``size x size``.

    Args:
        gt_masks: ``Tensor[G, H, W]`` (uint8/bool) masks of one image.
        matched: ``Tensor[R]`` index into ``gt_masks`` of each RoI's object.
        rois: ``Tensor[R, 4]`` xyxy in the masks' pixels.

    Returns:
        ``Tensor[R, size, size]`` float 0/1 targets (bilinear resampling, then >= 0.5).
    """
    if rois.shape[0] == 0:
        return rois.new_zeros(0, size, size)
    boxes = torch.cat([matched[:, None].to(rois.dtype), rois], dim=1)
    crops = roi_align(gt_masks[:, None].to(rois.dtype), boxes, (size, size), spatial_scale=1.0,
                      sampling_ratio=2, aligned=True)[:, 0]
    return (crops >= 0.5).to(rois.dtype)


class MaskHead(nn.Module, DeclaresClassAxes):
    """Per-class 28 x 28 mask logits for boxes on a shared feature map.

    Args (keyword-only):
        in_shapes: ``backbone.output_shape()``.
        num_classes: K.
        feature: the map to pool (default: the stride-16 one, else the finest).
        pooler_resolution: RoIAlign output size (14).
        sampling_ratio: RoIAlign samples per bin and axis.
        conv_dims: channels of the 3x3 conv layers (four of 256).
        multiscale_features: instead of ``feature``, FPN levels to pool each box from by its size
            (torchvision's ``MultiScaleRoIAlign``, not pixel-aligned, as its Mask R-CNN).
        rois_per_image: in training, at most this many of an image's positive RoIs feed the loss,
            drawn at random without replacement; None: all of them (the paper). The tower's cost
            is linear in its RoIs, and the positives of one object overlap heavily, so a random
            share of them is an unbiased, cheaper estimate of the same loss.
    """

    @classmethod
    def from_config(cls, settings: MaskConfig, in_shapes: dict[str, ShapeSpec], num_classes: int) -> "MaskHead":
        fields = {k: getattr(settings, k) for k in settings.__dataclass_fields__}
        return cls(in_shapes=in_shapes, num_classes=num_classes, **fields)

    def __init__(self, *, in_shapes: dict[str, ShapeSpec], num_classes: int, feature: Optional[str] = None,
                 pooler_resolution: int = 14, sampling_ratio: int = 2,
                 conv_dims: Sequence[int] = (256, 256, 256, 256),
                 multiscale_features: Optional[Sequence[str]] = None,
                 rois_per_image: Optional[int] = None):
        super().__init__()
        if rois_per_image is not None and rois_per_image < 1:
            raise ValueError(f"mask head: rois_per_image must be >= 1 or None, got {rois_per_image}")
        self.rois_per_image = rois_per_image
        self.multiscale = (MultiScaleRoIAlign(list(multiscale_features), pooler_resolution, sampling_ratio)
                           if multiscale_features else None)
        if multiscale_features:
            feature = multiscale_features[0]
        if feature is None:
            by_stride = {s.stride: n for n, s in in_shapes.items()}
            feature = by_stride.get(16, min(in_shapes, key=lambda n: in_shapes[n].stride))
        if feature not in in_shapes:
            raise ValueError(f"mask head: backbone has no feature {feature!r}; it has {sorted(in_shapes)}")
        spec = in_shapes[feature]
        self.feature, self.spatial_scale = feature, 1.0 / spec.stride
        self.pooler_resolution, self.sampling_ratio = pooler_resolution, sampling_ratio
        self.num_classes = num_classes
        layers: list[nn.Module] = []
        c = spec.channels
        for d in conv_dims:
            layers += [nn.Conv2d(c, d, 3, padding=1), nn.ReLU(inplace=True)]
            c = d
        self.convs = nn.Sequential(*layers)
        self.deconv = nn.ConvTranspose2d(c, c, 2, stride=2)
        self.predictor = nn.Conv2d(c, num_classes, 1)
        for layer in [*self.convs, self.deconv]:
            if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(layer.bias)
        nn.init.normal_(self.predictor.weight, std=0.001)
        nn.init.zeros_(self.predictor.bias)

    @property
    def resolution(self) -> int:
        return 2 * self.pooler_resolution

    @staticmethod
    def class_axes() -> dict:
        """Class-dependent tensors (``detseg.modeling.class_layout``): one mask channel a class."""
        return {"predictor.weight": {0: PER_CLASS}, "predictor.bias": {0: PER_CLASS}}

    def forward(self, features: dict, boxes: list[Tensor],
                image_sizes: Optional[list[tuple[int, int]]] = None) -> Tensor:
        """Logits ``Tensor[sum R_i, K, 28, 28]`` for per-image boxes ``Tensor[R_i, 4]``
        (``image_sizes``: the images' (h, w), needed by the multi-level pooler)."""
        if self.multiscale is not None:
            if image_sizes is None:
                raise TypeError("a multi-level mask head needs image_sizes")
            x = self.multiscale(features, boxes, [tuple(as_size(v) for v in hw) for hw in image_sizes])
        else:
            fmap = features[self.feature]
            x = roi_align(fmap, [b.to(fmap.dtype) for b in boxes], self.pooler_resolution,
                          spatial_scale=self.spatial_scale, sampling_ratio=self.sampling_ratio, aligned=True)
        return self.predictor(F.relu(self.deconv(self.convs(x))))

    def subsample(self, rois: list[Tensor], *per_roi: list[Tensor]) -> tuple[list[Tensor], ...]:
        """At most ``rois_per_image`` rows of each image's ``rois`` (``Tensor[P_i, 4]``) and of the
        per-RoI tensors beside them (``Tensor[P_i, ...]`` each), the same random rows of all."""
        k = self.rois_per_image
        if k is None:
            return (rois, *per_roi)
        out: list[list[Tensor]] = [[] for _ in range(1 + len(per_roi))]
        for i, r in enumerate(rois):
            keep = None
            if r.shape[0] > k:
                # the global generator, as the RoI sampler's draw: a seeded run repeats itself
                keep = torch.randperm(r.shape[0], device="cpu")[:k].to(r.device)
            for j, t in enumerate((r, *(p[i] for p in per_roi))):
                out[j].append(t if keep is None else t[keep])
        return tuple(out)

    def loss(self, features: dict, rois: list[Tensor], labels: list[Tensor], matched: list[Tensor],
             gt_masks: list[Tensor], image_sizes: Optional[list] = None) -> Tensor:
        """Sigmoid cross entropy on each positive RoI's own-class channel.

        Args:
            rois: per image, positive RoIs ``Tensor[P_i, 4]``; labels: their classes;
            matched: their ground-truth indices; gt_masks: per image ``Tensor[G_i, H, W]``.
            At most ``rois_per_image`` of each image's RoIs are used (``subsample``).
        """
        rois, labels, matched = self.subsample(rois, labels, matched)
        logits = self(features, rois, image_sizes)
        if logits.shape[0] == 0:
            return logits.sum() * 0.0
        targets = torch.cat([mask_targets(m.to(r.device), i, r, self.resolution)
                             for m, i, r in zip(gt_masks, matched, rois)])
        lab = torch.cat(labels)
        picked = logits[torch.arange(len(lab), device=lab.device), lab]
        return F.binary_cross_entropy_with_logits(picked, targets)

    def predict(self, features: dict, instances: list[Instances]) -> list[Instances]:
        """Attach ``masks`` ``Tensor[N, 28, 28]`` probabilities (own class) to each ``Instances``.

        Paste them into an image with ``detseg.ops.paste_masks(masks, boxes, size)``.
        """
        logits = self(features, [inst.boxes for inst in instances], [inst.image_size for inst in instances])
        if not instances:
            return []
        labels = torch.cat([inst.labels for inst in instances])
        # gather, not a branch on the count: no detections is a valid (empty) case, also in an
        # exported graph where the count is symbolic
        m = logits.shape[-1]
        probs = torch.sigmoid(logits.gather(1, labels.view(-1, 1, 1, 1).expand(-1, 1, m, m))[:, 0])
        out, start = [], 0
        for inst in instances:
            n = inst.boxes.shape[0]
            rows = slice(None) if len(instances) == 1 else slice(start, start + n)
            out.append(Instances(inst.image_size, inst.boxes, inst.scores, inst.labels, probs[rows], inst.logits))
            start += n
        return out
