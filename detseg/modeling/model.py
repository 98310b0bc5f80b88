"""``Model(backbone, heads)``: one backbone pass per batch, every head reads the same features."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .backbones import build_backbone
from .heads import FCNHead


class Model(nn.Module):
    """A shared backbone and named heads.

    Args:
        backbone: module returning ``{name: Tensor[B, C, h, w]}`` with ``output_shape()``.
        heads: ``{name: head}``; a head has ``forward_train(features, batch) -> {loss_name: loss}``
            and ``forward_test(features, batch) -> predictions``.
        pixel_mean, pixel_std: RGB normalisation applied to the uint8 images.

    ``forward(batch)`` (batch from ``detseg.data.transforms.collate``) returns in training mode
    ``{"loss": sum, <each head's losses>}`` and in eval mode ``{head name: predictions}``.
    """

    def __init__(self, backbone: nn.Module, heads: dict[str, nn.Module], *,
                 pixel_mean: Sequence[float] = (123.675, 116.28, 103.53),
                 pixel_std: Sequence[float] = (58.395, 57.12, 57.375)):
        super().__init__()
        if not heads:
            raise ValueError("a Model needs at least one head")
        self.backbone = backbone
        self.heads = nn.ModuleDict(heads)
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(1, 3, 1, 1), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B, 3, H, W]`` → normalised float ``[B, 3, H, W]`` on the model's device."""
        x = images.to(self.device, non_blocking=True).float()
        return (x - self.pixel_mean) / self.pixel_std

    def forward(self, batch: dict) -> dict:
        features = self.backbone(self.preprocess(batch["images"]))
        if self.training:
            losses: dict[str, torch.Tensor] = {}
            for head in self.heads.values():
                losses.update(head.forward_train(features, batch))
            losses["loss"] = sum(losses.values())
            return losses
        return {name: head.forward_test(features, batch) for name, head in self.heads.items()}


def build_model(cfg, num_classes: int) -> Model:
    """Build the model a config describes, for a dataset of ``num_classes`` classes."""
    m = cfg.model
    bb = m.backbone
    backbone = build_backbone(bb.name, weights=bb.weights, freeze_at=bb.freeze_at, norm=bb.norm,
                              fpn=bb.fpn, fpn_channels=bb.fpn_channels)
    heads: dict[str, nn.Module] = {}
    for name in m.heads:
        if name == "fcn":
            heads["fcn"] = FCNHead(in_shapes=backbone.output_shape(), num_classes=num_classes,
                                   variant=m.fcn.variant)
        else:
            raise ValueError(f"unknown head {name!r} in model.heads; available: fcn")
    return Model(backbone, heads, pixel_mean=m.pixel_mean, pixel_std=m.pixel_std)
