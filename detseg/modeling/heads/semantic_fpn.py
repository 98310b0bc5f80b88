"""Panoptic FPN's semantic branch (Kirillov, Girshick, He, Dollár 2019, section 3.2).

Each FPN level is brought to a common stride (the finest level read, 1/4 in the paper, 1/8 on
detseg's default p3-p5 pyramid) by as many stages of 3x3 conv, GroupNorm, ReLU and 2x bilinear
upsampling as its stride needs (one conv without upsampling for the finest level); the levels
are summed, a 1x1 conv scores the classes, and the map is upsampled bilinearly to the input size.
In a panoptic model the classes are the stuff classes plus one "things" class (index 0), and the
loss is weighted against the instance head's (the paper's lambda_s, 0.5 in detectron2's recipes).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ...config import ranged
from ...structures import Batch, SEMANTIC_IGNORE as IGNORE
from ..backbones import ShapeSpec
from ..class_layout import BG_FIRST
from ..losses import ClassWeightedLoss, LossConfig
from .base import SEMANTIC, Head


@dataclass
class SemanticFPNHeadConfig:
    """Panoptic FPN's semantic branch (``type: semantic_fpn``)."""

    type: Literal["semantic_fpn"] = "semantic_fpn"
    # pyramid levels read; None: every level of the backbone's FPN but the RPN's pooled extra one
    in_features: Optional[list[str]] = None
    conv_dims: int = ranged(128, ge=1)  # channels of each upsampling stage
    # stride the levels are brought to before summing; None: the finest level's
    common_stride: Optional[int] = ranged(None, ge=1)
    norm: Literal["gn", "bn", "none"] = "gn"  # after each 3x3 conv (the paper: GroupNorm, 32 groups)
    loss_weight: float = ranged(1.0, ge=0)  # the semantic loss's weight in the model's sum
    loss: LossConfig = field(default_factory=LossConfig)


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "gn":
        return nn.GroupNorm(min(32, channels), channels)
    return nn.BatchNorm2d(channels) if kind == "bn" else nn.Identity()


class SemanticFPNHead(ClassWeightedLoss, Head):
    """Semantic segmentation from an FPN's levels, summed at a common stride.

    Args (keyword-only):
        in_shapes: ``{name: ShapeSpec}`` from ``backbone.output_shape()``.
        num_classes: K classes; the head predicts K + 1 maps (index 0: background, or in a
            panoptic model every thing).
        in_features: levels read (default: all of ``in_shapes``; from a config, every ``p*``
            level but the RPN's pooled extra one); their strides must be powers of two times the
            common stride.
        conv_dims, common_stride, norm: see ``SemanticFPNHeadConfig``.
        loss_weight: multiplies the loss (``loss_sem_seg``).
        loss: ``LossConfig`` of the per-pixel loss.

    Output: logits ``Tensor[B, K + 1, H, W]`` at the padded input size.
    """

    output = SEMANTIC
    config_class = SemanticFPNHeadConfig
    count_kind = "pixels"

    @classmethod
    def from_config(cls, settings: SemanticFPNHeadConfig, backbone: nn.Module,
                    num_classes: int) -> "SemanticFPNHead":
        kwargs = cls.settings_kwargs(settings)
        if kwargs["in_features"] is None:  # the FPN's levels without the RPN's pooled extra one
            extra = getattr(backbone, "extra_name", None)
            kwargs["in_features"] = [n for n in backbone.output_shape() if n.startswith("p") and n != extra]
        return cls(in_shapes=backbone.output_shape(), num_classes=num_classes, **kwargs)

    def __init__(self, *, in_shapes: dict[str, ShapeSpec], num_classes: int,
                 in_features: Optional[list[str]] = None, conv_dims: int = 128,
                 common_stride: Optional[int] = None, norm: str = "gn", loss_weight: float = 1.0,
                 loss: LossConfig | None = None):
        super().__init__()
        in_features = list(in_features if in_features is not None else in_shapes)
        if not in_features:
            raise ValueError("semantic_fpn: no features to read; a semantic FPN head needs backbone.fpn: true")
        unknown = [n for n in in_features if n not in in_shapes]
        if unknown:
            raise ValueError(f"semantic_fpn in_features {unknown} are not backbone features "
                             f"({', '.join(in_shapes)}); a semantic FPN head needs backbone.fpn: true")
        if norm not in ("gn", "bn", "none"):
            raise ValueError(f"semantic_fpn norm must be gn, bn or none, got {norm!r}")
        self.in_features = sorted(in_features, key=lambda n: in_shapes[n].stride)
        finest = in_shapes[self.in_features[0]].stride
        self.common_stride = int(common_stride or finest)
        self.loss_weight = float(loss_weight)
        self.init_loss(loss, num_classes + 1)
        self.num_outputs = num_classes + 1
        self.stages = nn.ModuleList()
        for name in self.in_features:
            stride, channels = in_shapes[name].stride, in_shapes[name].channels
            ups = stride // self.common_stride
            if stride % self.common_stride or ups & (ups - 1):
                raise ValueError(f"semantic_fpn: feature {name} (stride {stride}) is not a power-of-two "
                                 f"multiple of the common stride {self.common_stride}")
            steps = max(1, ups.bit_length() - 1)  # one conv per 2x, and one without upsampling at 1x
            layers: list[nn.Module] = []
            for k in range(steps):
                layers += [nn.Conv2d(channels if k == 0 else conv_dims, conv_dims, 3, padding=1,
                                     bias=norm == "none"),
                           _norm(norm, conv_dims), nn.ReLU(inplace=True)]
                if ups > 1:
                    layers.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.stages.append(nn.Sequential(*layers))
        self.predictor = nn.Conv2d(conv_dims, num_classes + 1, 1)
        for m in self.modules():  # detectron2's c2_msra_fill of the convs
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.normal_(self.predictor.weight, std=0.001)

    def class_axes(self) -> dict:
        """The predictor's output maps, background (things) first."""
        return {"predictor.weight": {0: BG_FIRST}, "predictor.bias": {0: BG_FIRST}}

    def forward(self, features: dict[str, torch.Tensor], images_hw: tuple[int, int]) -> torch.Tensor:
        """features: ``{name: Tensor[B, C, h, w]}`` → logits ``[B, K + 1, H, W]`` for the padded
        input of size ``images_hw``."""
        x = None
        for name, stage in zip(self.in_features, self.stages):
            y = stage(features[name])
            if x is None:
                x = y
            else:  # levels of odd-sized inputs round differently: align to the finest one
                x = x + y[..., :x.shape[-2], :x.shape[-1]]
        x = self.predictor(x)
        return F.interpolate(x, size=tuple(images_hw), mode="bilinear", align_corners=False)

    def forward_train(self, features: dict, batch) -> dict[str, torch.Tensor]:
        """``loss_sem_seg`` against ``batch.semantic`` (``[B, H, W]``, 255 = ignore)."""
        batch = Batch.of(batch)
        hw = tuple(batch.semantic.shape[-2:])
        target = batch.semantic.to(features[self.in_features[0]].device).long()
        loss = self.classification_loss(self(features, hw), target, ignore_index=IGNORE)
        return {"loss_sem_seg": self.loss_weight * loss}

    def forward_test(self, features: dict, batch) -> torch.Tensor:
        """Logits ``[B, K + 1, H, W]`` at the padded input size."""
        batch = Batch.of(batch)
        return self(features, tuple(batch.images.shape[-2:]))
