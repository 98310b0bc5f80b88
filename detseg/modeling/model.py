"""``Model(backbone, heads)``: one backbone pass per batch, every head reads the same features."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
from torch import nn

from ..config import ConfigError
from ..structures import Batch
from .backbones import build_backbone
from .heads import CLASSES, INSTANCES, SEMANTIC, Head, head_class


class Model(nn.Module):
    """A shared backbone and named heads.

    Args:
        backbone: module returning ``{name: Tensor[B, C, h, w]}`` with ``output_shape()``.
        heads: ``{name: Head}`` (``detseg.modeling.heads.Head``: the head declares whether it
            reads the shared features, runs the backbone itself, and returns instances or a
            semantic map).
        pixel_mean, pixel_std: RGB normalisation applied to the uint8 images.
        resize: ``None`` (the data pipeline resizes), or (min_size, max_size): the model normalises
            each image at its own size, resizes it bilinearly so its short side is ``min_size``
            (long side at most ``max_size``) and pads the batch to a multiple of 32 with zeros,
            exactly as torchvision's detection transform does; inference only. The heads see the
            resized sizes in ``batch.image_sizes``.
        panoptic: ``None``, or the keyword arguments of ``merge_panoptic``: in eval mode the
            output then also holds ``"panoptic"``, one (segment-id map, segments) per image,
            from the semantic head's map and the instances of the head with masks.

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
        if not heads:
            raise ValueError("a Model needs at least one head")
        for name, head in heads.items():
            if not isinstance(head, Head):
                raise TypeError(f"head {name!r} ({type(head).__name__}) is not a "
                                f"detseg.modeling.heads.Head")
        if resize is not None and any(h.output in (SEMANTIC, CLASSES) for h in heads.values()):
            raise ValueError("in-model resizing is for detection heads (a semantic map would need "
                             "resizing back; a classifier's images are cropped by the data pipeline)")
        self.panoptic = panoptic
        if panoptic is not None and (self._head_of(heads, SEMANTIC) is None
                                     or self._mask_head_name(heads) is None):
            raise ValueError("panoptic output needs a semantic head and a region head with a mask head")
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
            # torch.sym_min / sym_max, not min / max: under torch.export h and w are symbolic and
            # min() would fix the exported graph to the example's orientation. The size is what
            # interpolate(scale_factor=scale, recompute_scale_factor=True) computes: floor(h * scale),
            # here as sym_int (truncation, the floor of a positive size), which .pt2 files can store.
            scale = torch.sym_min(min_size / torch.sym_min(h, w), max_size / torch.sym_max(h, w))
            size = (torch.sym_int(h * scale), torch.sym_int(w * scale))
            resized.append(torch.nn.functional.interpolate(
                img[None, :, :h, :w], size=size, mode="bilinear", align_corners=False)[0])
        hp = max(r.shape[1] for r in resized)
        wp = max(r.shape[2] for r in resized)
        hp, wp = (hp + 31) // 32 * 32, (wp + 31) // 32 * 32
        out = torch.stack([torch.nn.functional.pad(r, (0, wp - r.shape[2], 0, hp - r.shape[1]))
                           for r in resized])
        return out, [tuple(r.shape[1:]) for r in resized]

    def forward(self, batch: Union[Batch, dict], *, panoptic: bool = True) -> dict:
        """``panoptic=False`` leaves out the panoptic merge (export traces the heads and merges
        outside the graph)."""
        batch = Batch.of(batch)
        pixels = self.preprocess(batch.images)
        if self.resize is not None:
            if self.training:
                raise RuntimeError("in-model resizing (model.input_resize: model) is for inference only")
            pixels, sizes = self.resize_inputs(pixels, batch.image_sizes)
            batch = batch.replace(image_sizes=sizes)
        batch = batch.replace(pixels=pixels)
        features = self.backbone(pixels) if any(h.needs_features for h in self.heads.values()) else None
        call = "forward_train" if self.training else "forward_test"
        outputs = {}
        for name, head in self.heads.items():
            extra = {"backbone": self.backbone} if head.uses_backbone else {}
            outputs[name] = getattr(head, call)(features, batch, **extra)
        if not self.training:
            if self.panoptic is not None and panoptic:
                outputs["panoptic"] = self._merge(outputs, batch)
            return outputs
        # A loss name two heads share (two region heads both have loss_cls) is kept apart by
        # the head's name: det_loss_cls, det2_loss_cls; unshared names stay as they are.
        counts: dict[str, int] = {}
        for head_losses in outputs.values():
            for key in head_losses:
                counts[key] = counts.get(key, 0) + 1
        losses: dict[str, torch.Tensor] = {}
        for name, head_losses in outputs.items():
            losses.update({(f"{name}_{k}" if counts[k] > 1 else k): v for k, v in head_losses.items()})
        losses["loss"] = sum(losses.values())
        return losses

    def parts(self) -> dict[str, list[str]]:
        """Named parts (for freezing): ``{name: [module path, ...]}``.

        ``backbone`` (the CNN without its FPN), ``fpn``, every part the heads declare
        (``Head.parts``: ``rpn``, each learnt proposal network; ``mask``, each mask branch),
        ``heads`` and each head by its name; parts this model lacks are left out.
        """
        has_fpn = isinstance(getattr(self.backbone, "fpn", None), nn.Module)
        out = {"backbone": ["backbone.body" if has_fpn else "backbone"]}
        if has_fpn:
            out["fpn"] = ["backbone.fpn"]
        for part in ("rpn", "mask"):  # kept first, in this order, whether or not a head has one
            out[part] = []
        for name, head in self.heads.items():
            for part, path in head.parts().items():
                out.setdefault(part, []).append(f"heads.{name}.{path}")
        out["heads"] = ["heads"]
        # a head named like a part above (say "fpn") is still reachable as heads.<name>
        out.update({name: [f"heads.{name}"] for name in self.heads if name not in out})
        return {k: v for k, v in out.items() if v}

    @staticmethod
    def _head_of(heads, output: str) -> Optional[str]:
        return next((n for n, h in heads.items() if h.output == output), None)

    @staticmethod
    def _mask_head_name(heads) -> Optional[str]:
        return next((n for n, h in heads.items() if h.output == INSTANCES and h.predicts_masks), None)

    def _merge(self, outputs: dict, batch: Batch) -> list:
        """Each image's panoptic segmentation at its file's size (``batch.orig_sizes``), as
        detectron2 merges: the semantic logits upsampled bilinearly, the masks pasted into the
        file's pixels."""
        from .heads.fcn import labels_at
        from .panoptic import merge_panoptic
        logits = outputs[self._head_of(self.heads, SEMANTIC)]
        instances = outputs[self._mask_head_name(self.heads)]
        out = []
        for i, ((h, w), inst) in enumerate(zip(batch.image_sizes, instances)):
            size = tuple(batch.orig_sizes[i]) if batch.orig_sizes else (h, w)
            semantic = labels_at(logits[i, :, :h, :w], size)
            out.append(merge_panoptic(semantic, inst.scale(size[1] / w, size[0] / h, size), **self.panoptic))
        return out


def build_head(settings, backbone: nn.Module, num_classes: int) -> Head:
    """One head from its settings (a ``model.heads`` entry): ``HEAD_TYPES[settings.type]``."""
    return head_class(settings).from_config(settings, backbone, num_classes)


@dataclass
class DataNeeds:
    """What a config's heads need from the data pipeline (known before the model is built)."""

    semantic: bool  # per-pixel class maps
    classify: bool  # one label per image (a classification dataset)
    masks: bool  # instance masks
    proposals: Optional[object]  # the ProposalConfig of heads reading selective-search caches


def data_needs(cfg) -> DataNeeds:
    """What the heads of ``cfg.model.heads`` need from the dataset."""
    heads = [(head_class(h), h) for h in cfg.model.heads.values()]
    classify = [cls.output == CLASSES for cls, _ in heads]
    if any(classify) and not all(classify):
        raise ConfigError("model.heads: a classify head reads a classification dataset (one label per "
                          "image); it cannot share a model with detection or segmentation heads")
    cached = [cls.proposal_settings(h) for cls, h in heads]
    cached = [p for p in cached if p is not None and p.source == "selective_search"]
    if len({(p.mode, p.max_per_image, p.train_file, p.val_file) for p in cached}) > 1:
        raise ConfigError("model.heads: heads reading selective-search proposals must share their "
                          "proposal settings (one cache per split)")
    return DataNeeds(semantic=any(cls.output == SEMANTIC for cls, _ in heads), classify=any(classify),
                     masks=any(cls.predicts_masks_for(h) for cls, h in heads),
                     proposals=cached[0] if cached else None)


def panoptic_settings(cfg) -> Optional[dict]:
    """``merge_panoptic``'s keyword arguments from ``cfg.model.panoptic`` (None: no merge)."""
    p = cfg.model.panoptic
    if not p.enabled:
        return None
    return {"instance_score": p.instance_score, "overlap": p.overlap, "min_area": p.min_area}


def build_model(cfg, num_classes: int, num_stuff: Optional[int] = None) -> Model:
    """Build the model a config describes, for a dataset of ``num_classes`` classes (things).

    ``num_stuff``: the stuff classes of panoptic training data; the semantic heads of a panoptic
    model then predict those (index 0: any thing) instead of the ``num_classes`` classes."""
    m = cfg.model
    bb = m.backbone
    backbone = build_backbone(bb.name, weights=bb.weights, freeze_at=bb.freeze_at, norm=bb.norm,
                              fpn=bb.fpn, fpn_channels=bb.fpn_channels, out_features=bb.out_features,
                              fpn_extra_pool=bb.fpn_extra_pool)

    def classes(settings) -> int:
        stuff = m.panoptic.enabled and num_stuff is not None and head_class(settings).output == SEMANTIC
        return num_stuff if stuff else num_classes

    heads = {name: build_head(settings, backbone, classes(settings)) for name, settings in m.heads.items()}
    panoptic = panoptic_settings(cfg)
    resize = (cfg.data.min_size_test, cfg.data.max_size) if m.input_resize == "model" else None
    return Model(backbone, heads, pixel_mean=m.pixel_mean, pixel_std=m.pixel_std, panoptic=panoptic,
                 resize=resize)
