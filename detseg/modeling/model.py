"""``Model(backbone, heads)``: one backbone pass per batch, every head reads the same features."""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import nn

from .backbones import build_backbone, coarsest
from .heads import FCNHead

HEADS = ("fcn", "sliding_window", "rcnn", "spp")
DETECTION_HEADS = ("sliding_window", "rcnn", "spp")


class Model(nn.Module):
    """A shared backbone and named heads.

    Args:
        backbone: module returning ``{name: Tensor[B, C, h, w]}`` with ``output_shape()``.
        heads: ``{name: head}``; a head has ``forward_train(features, batch) -> {loss_name: loss}``
            and ``forward_test(features, batch) -> predictions``. A head that runs the backbone
            on inputs of its own (R-CNN's warped crops, the sliding window's padded image) sets
            ``uses_backbone = True`` and is called with ``backbone=``; one that does not read
            the shared full-image features sets ``needs_features = False``.
        pixel_mean, pixel_std: RGB normalisation applied to the uint8 images.
        resize: ``None`` (the data pipeline resizes), or (min_size, max_size): the model normalises
            each image at its own size, resizes it bilinearly so its short side is ``min_size``
            (long side at most ``max_size``) and pads the batch to a multiple of 32 with zeros,
            exactly as torchvision's detection transform does; inference only. The heads see the
            resized sizes in ``batch["image_sizes"]``.
        panoptic: ``None``, or the keyword arguments of ``merge_panoptic``: in eval mode the
            output then also holds ``"panoptic"``, one (segment-id map, segments) per image,
            from the ``fcn`` head's semantic map and the instances of the head with masks.

    ``forward(batch)`` (batch from ``detseg.data.transforms.collate``) returns in training mode
    ``{"loss": sum, <each head's losses>}`` and in eval mode ``{head name: predictions}``. Heads
    see the batch with ``pixels`` added: the normalised float images ``[B, 3, H, W]``.
    """

    def __init__(self, backbone: nn.Module, heads: dict[str, nn.Module], *,
                 pixel_mean: Sequence[float] = (123.675, 116.28, 103.53),
                 pixel_std: Sequence[float] = (58.395, 57.12, 57.375), panoptic: Optional[dict] = None,
                 resize: Optional[tuple[int, int]] = None):
        super().__init__()
        self.resize = resize
        if resize is not None and "fcn" in heads:
            raise ValueError("in-model resizing is for detection heads "
                             "(the FCN output would need resizing back)")
        if not heads:
            raise ValueError("a Model needs at least one head")
        self.panoptic = panoptic
        if panoptic is not None and ("fcn" not in heads or self._mask_head_name(heads) is None):
            raise ValueError("panoptic output needs an 'fcn' head and a region head with a mask head")
        self.backbone = backbone
        self.heads = nn.ModuleDict(heads)
        # Kept in [0, 1] units and applied after x / 255, the same float operations as
        # torchvision's detection transform, so that imported weights see identical inputs.
        unit = torch.tensor(pixel_mean, dtype=torch.float64) / 255
        self.register_buffer("pixel_mean", unit.float().view(1, 3, 1, 1), persistent=False)
        unit = torch.tensor(pixel_std, dtype=torch.float64) / 255
        self.register_buffer("pixel_std", unit.float().view(1, 3, 1, 1), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B, 3, H, W]`` → normalised float ``[B, 3, H, W]`` on the model's device."""
        x = images.to(self.device, non_blocking=True).float() / 255
        return (x - self.pixel_mean) / self.pixel_std

    def resize_inputs(self, pixels: torch.Tensor, image_sizes) -> tuple[torch.Tensor, list]:
        """torchvision's detection resize of normalised images: ``[B, 3, H', W']`` padded to 32."""
        min_size, max_size = self.resize
        resized = []
        for img, (h, w) in zip(pixels, image_sizes):
            scale = min(min_size / min(h, w), max_size / max(h, w))
            resized.append(torch.nn.functional.interpolate(
                img[None, :, :h, :w], scale_factor=scale, mode="bilinear", recompute_scale_factor=True,
                align_corners=False)[0])
        hp = int(math.ceil(max(r.shape[1] for r in resized) / 32) * 32)
        wp = int(math.ceil(max(r.shape[2] for r in resized) / 32) * 32)
        out = pixels.new_zeros(len(resized), 3, hp, wp)
        for o, r in zip(out, resized):
            o[:, : r.shape[1], : r.shape[2]] = r
        return out, [tuple(r.shape[1:]) for r in resized]

    def forward(self, batch: dict) -> dict:
        pixels = self.preprocess(batch["images"])
        if self.resize is not None:
            if self.training:
                raise RuntimeError("in-model resizing (model.input_resize: model) is for inference only")
            pixels, sizes = self.resize_inputs(pixels, batch["image_sizes"])
            batch = {**batch, "image_sizes": sizes}
        batch = {**batch, "pixels": pixels}
        features = (self.backbone(pixels)
                    if any(getattr(h, "needs_features", True) for h in self.heads.values()) else None)
        call = "forward_train" if self.training else "forward_test"
        outputs = {}
        for name, head in self.heads.items():
            extra = {"backbone": self.backbone} if getattr(head, "uses_backbone", False) else {}
            outputs[name] = getattr(head, call)(features, batch, **extra)
        if not self.training:
            if self.panoptic is not None:
                outputs["panoptic"] = self._merge(outputs, batch)
            return outputs
        losses: dict[str, torch.Tensor] = {}
        for head_losses in outputs.values():
            losses.update(head_losses)
        losses["loss"] = sum(losses.values())
        return losses

    @staticmethod
    def _mask_head_name(heads) -> Optional[str]:
        return next((n for n, h in heads.items() if getattr(h, "mask_head", None) is not None), None)

    def _merge(self, outputs: dict, batch: dict) -> list:
        from .panoptic import merge_panoptic
        semantic = outputs["fcn"].argmax(1)
        instances = outputs[self._mask_head_name(self.heads)]
        return [merge_panoptic(semantic[i, :h, :w], inst, **self.panoptic)
                for i, ((h, w), inst) in enumerate(zip(batch["image_sizes"], instances))]


def build_proposals(cfg, in_shapes: dict, feature: str) -> nn.Module:
    """The proposal source ``cfg.model.proposals`` describes, for a region head on ``feature``."""
    from .proposals import RPN, DenseWindowProposals, SelectiveSearchProposals
    p = cfg.model.proposals
    if p.source == "selective_search":
        return SelectiveSearchProposals(mode=p.mode, max_per_image=p.max_per_image)
    if p.source == "windows":
        return DenseWindowProposals(sizes=p.window_sizes, aspect_ratios=p.window_ratios,
                                    stride=p.window_stride)
    names = p.rpn_features or [feature]
    unknown = [n for n in names if n not in in_shapes]
    if unknown:
        raise ValueError(f"model.proposals.rpn_features: backbone has no {unknown}; "
                         f"it has {sorted(in_shapes)}")
    if len(p.anchor_sizes) != len(names):
        raise ValueError(f"model.proposals.anchor_sizes needs one list per RPN feature map "
                         f"({len(names)}), got {len(p.anchor_sizes)}")
    channels = {in_shapes[n].channels for n in names}
    if len(channels) != 1:
        raise ValueError(f"RPN feature maps {names} differ in channels {channels}; use an FPN")
    return RPN(in_channels=channels.pop(), features=names, strides=[in_shapes[n].stride for n in names],
               anchor_sizes=p.anchor_sizes, aspect_ratios=p.aspect_ratios,
               pre_nms_top_n=tuple(p.pre_nms_top_n), post_nms_top_n=tuple(p.post_nms_top_n),
               nms_thresh=p.nms_thresh, fg_iou=p.fg_iou, bg_iou=p.bg_iou,
               batch_size_per_image=p.batch_size_per_image, positive_fraction=p.positive_fraction)


def _region_kwargs(r) -> dict:
    return dict(fc_dims=tuple(r.fc_dims), dropout=r.dropout, batch_size_per_image=r.batch_size_per_image,
                fg_fraction=r.fg_fraction, fg_iou=r.fg_iou, bg_iou=r.bg_iou, bg_iou_low=r.bg_iou_low,
                reg_iou=r.reg_iou, classifier=r.classifier, svm_neg_iou=r.svm_neg_iou,
                score_thresh=r.score_thresh, nms_thresh=r.nms_thresh,
                detections_per_image=r.detections_per_image, min_box_size=r.min_box_size)


def build_head(name: str, cfg, backbone: nn.Module, num_classes: int) -> nn.Module:
    """One head of ``cfg.model.heads``, its channel counts read from ``backbone.output_shape()``."""
    from .heads import RCNNHead, SlidingWindowHead, SPPHead
    from .heads.sliding_window import context_margin, default_feature
    m = cfg.model
    shapes = backbone.output_shape()
    if name == "fcn":
        return FCNHead(in_shapes=shapes, num_classes=num_classes, variant=m.fcn.variant)
    if name == "sliding_window":
        s = m.sliding_window
        feature = s.feature or default_feature(shapes)
        return SlidingWindowHead(
            in_shapes=shapes, num_classes=num_classes, feature=feature,
            margin=context_margin(backbone, feature, shapes[feature].stride),
            window_sizes=s.window_sizes, aspect_ratios=s.aspect_ratios, scales=s.scales, reduce=s.reduce,
            hidden=s.hidden, mode=s.mode,
            fg_iou=s.fg_iou, bg_iou=s.bg_iou, batch_size_per_image=s.batch_size_per_image,
            fg_fraction=s.fg_fraction, hard_negative_fraction=s.hard_negative_fraction,
            score_thresh=s.score_thresh, nms_thresh=s.nms_thresh,
            detections_per_image=s.detections_per_image)
    r = m.roi
    feature = (r.multiscale_features or [None])[0] or r.feature or coarsest(shapes)
    if feature not in shapes:
        raise ValueError(f"model.roi.feature: backbone has no {feature!r}; it has {sorted(shapes)}")
    proposals = build_proposals(cfg, shapes, feature)
    mask_head = None
    if m.mask.enabled:
        if name == "rcnn":
            raise ValueError("model.mask needs a shared feature map: attach it to the spp head, not rcnn")
        from .heads.mask import MaskHead
        mask_head = MaskHead(in_shapes=shapes, num_classes=num_classes, feature=m.mask.feature,
                             pooler_resolution=m.mask.pooler_resolution,
                             sampling_ratio=m.mask.sampling_ratio, conv_dims=m.mask.conv_dims,
                             multiscale_features=m.mask.multiscale_features)
    if name == "rcnn":
        return RCNNHead(in_shapes=shapes, proposals=proposals, num_classes=num_classes, feature=feature,
                        warp_size=r.warp_size, context_pad=r.context_pad, pool_size=r.pool_size,
                        **_region_kwargs(r))
    if name == "spp":
        return SPPHead(in_shapes=shapes, proposals=proposals, num_classes=num_classes, feature=feature,
                       levels=r.levels, mapping=r.mapping, pooler=r.pooler,
                       multiscale_features=r.multiscale_features, sampling_ratio=r.sampling_ratio,
                       aligned=r.aligned, mask_head=mask_head, **_region_kwargs(r))
    raise ValueError(f"unknown head {name!r} in model.heads; available: {', '.join(HEADS)}")


def build_model(cfg, num_classes: int) -> Model:
    """Build the model a config describes, for a dataset of ``num_classes`` classes."""
    m = cfg.model
    bb = m.backbone
    backbone = build_backbone(bb.name, weights=bb.weights, freeze_at=bb.freeze_at, norm=bb.norm,
                              fpn=bb.fpn, fpn_channels=bb.fpn_channels, out_features=bb.out_features,
                              fpn_extra_pool=bb.fpn_extra_pool)
    heads = {name: build_head(name, cfg, backbone, num_classes) for name in m.heads}
    panoptic = None
    if m.panoptic.enabled:
        panoptic = {"instance_score": m.panoptic.instance_score, "overlap": m.panoptic.overlap,
                    "min_area": m.panoptic.min_area}
    resize = (cfg.data.min_size_test, cfg.data.max_size) if m.input_resize == "model" else None
    return Model(backbone, heads, pixel_mean=m.pixel_mean, pixel_std=m.pixel_std, panoptic=panoptic,
                 resize=resize)
