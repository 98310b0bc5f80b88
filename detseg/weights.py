"""Import torchvision's COCO-trained Faster / Mask R-CNN (ResNet-50-FPN, v1) into detseg.

``from_torchvision`` renames every tensor of torchvision's state dict to detseg's module names
and reorders the class dimension: torchvision puts background first (index 0), detseg last
(index K) and keeps no background box or mask channel. The result is a detseg checkpoint (config,
COCO class names and category ids included) that ``load_model``, ``tools/infer.py`` and
``tools/eval.py`` use directly.
"""
from __future__ import annotations

import os
import re
from typing import Optional

from .config import load_config, to_dict

CONFIGS = {"faster_rcnn": "faster_rcnn_r50_fpn_coco.yaml", "mask_rcnn": "mask_rcnn_r50_fpn_coco.yaml"}
ENUMS = {"faster_rcnn": "FasterRCNN_ResNet50_FPN_Weights", "mask_rcnn": "MaskRCNN_ResNet50_FPN_Weights"}
_CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")

# (torchvision pattern, detseg replacement), tried in order; the class-dimension reorders are
# handled separately below.
_RENAMES = [
    (r"^backbone\.body\.conv1\.", "backbone.body.stages.stem.0."),
    (r"^backbone\.body\.bn1\.", "backbone.body.stages.stem.1."),
    (r"^backbone\.body\.layer(\d)\.", lambda m: f"backbone.body.stages.c{int(m.group(1)) + 1}."),
    (r"^backbone\.fpn\.", "backbone.fpn."),
    (r"^rpn\.head\.conv\.0\.0\.", "heads.det.proposals.conv."),
    (r"^rpn\.head\.conv\.", "heads.det.proposals.conv."),  # older torchvision: a bare conv
    (r"^rpn\.head\.cls_logits\.", "heads.det.proposals.objectness."),
    (r"^rpn\.head\.bbox_pred\.", "heads.det.proposals.deltas."),
    (r"^roi_heads\.box_head\.fc6\.", "heads.det.fc.0."),
    (r"^roi_heads\.box_head\.fc7\.", "heads.det.fc.2."),
    (r"^roi_heads\.box_predictor\.", "heads.det.predictor."),
    (r"^roi_heads\.mask_head\.(\d)\.0\.", lambda m: f"heads.det.mask_head.convs.{2 * int(m.group(1))}."),
    (r"^roi_heads\.mask_head\.mask_fcn(\d)\.",
     lambda m: f"heads.det.mask_head.convs.{2 * (int(m.group(1)) - 1)}."),
    (r"^roi_heads\.mask_predictor\.conv5_mask\.", "heads.det.mask_head.deconv."),
    (r"^roi_heads\.mask_predictor\.mask_fcn_logits\.", "heads.det.mask_head.predictor."),
]


class ConversionError(ValueError):
    """The state dict is not one of the torchvision models this converter knows."""


def coco_classes() -> tuple[list[str], list[int]]:
    """torchvision's 90 COCO label slots (label i + 1 is COCO category id i + 1; unused ids are
    named "N/A", as in torchvision, so that outputs line up one to one)."""
    from torchvision.models._meta import _COCO_CATEGORIES
    names = list(_COCO_CATEGORIES[1:])
    return names, list(range(1, len(names) + 1))


def rename(key: str) -> Optional[str]:
    for pattern, repl in _RENAMES:
        new, n = re.subn(pattern, repl, key)
        if n:
            return new
    return None


def from_torchvision(state: dict, model: str) -> dict:
    """A detseg checkpoint dict from a torchvision Faster / Mask R-CNN R50-FPN state dict.

    Args:
        state: torchvision's ``model.state_dict()`` (91 classes, background first).
        model: ``"faster_rcnn"`` or ``"mask_rcnn"``.

    Returns:
        {"model", "config", "class_names", "label_map", "num_classes", "source"}.

    Raises:
        ConversionError: a key this converter does not know, or the wrong class count.
    """
    if model not in CONFIGS:
        raise ConversionError(f"model must be one of {sorted(CONFIGS)}, got {model!r}")
    names, cat_ids = coco_classes()
    k = len(names)
    out, unknown = {}, []
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        new = rename(key)
        if new is None:
            unknown.append(key)
            continue
        out[new] = value
    if unknown:
        raise ConversionError(f"{len(unknown)} keys this converter does not know (e.g. {unknown[:3]}); "
                              f"expected torchvision's {ENUMS[model]} architecture")
    if model == "faster_rcnn" and any(key.startswith("heads.det.mask_head.") for key in out):
        raise ConversionError("this state dict has a mask head: convert it with --model mask_rcnn")
    cls = out.get("heads.det.predictor.cls_score.weight")
    if cls is None or cls.shape[0] != k + 1:
        raise ConversionError(f"expected a {k + 1}-way classifier (COCO + background), got "
                              f"{None if cls is None else tuple(cls.shape)}")
    order = list(range(1, k + 1)) + [0]  # background moves from first to last
    for suffix in ("weight", "bias"):
        key = f"heads.det.predictor.cls_score.{suffix}"
        out[key] = out[key][order]
        key = f"heads.det.predictor.bbox_pred.{suffix}"
        out[key] = out[key][4:]  # torchvision's background box deltas: unused
        key = f"heads.det.mask_head.predictor.{suffix}"
        if key in out:
            out[key] = out[key][1:]  # and its background mask channel
    cfg = load_config(os.path.join(_CONFIG_DIR, CONFIGS[model]))
    return {"model": out, "config": to_dict(cfg), "class_names": names,
            "label_map": {"cat_ids": cat_ids, "class_names": names}, "num_classes": k,
            "source": f"torchvision {ENUMS[model]}"}


def load_torchvision_state(path_or_enum: str, model: str) -> dict:
    """torchvision weights from a local file (.pth, read with weights_only=True) or, online, the
    weights enum member name (e.g. ``COCO_V1``)."""
    if os.path.exists(path_or_enum) or path_or_enum.endswith((".pth", ".pt")):
        from .modeling.backbones import read_state_dict
        return read_state_dict(path_or_enum)
    import torchvision
    enum = getattr(torchvision.models.detection, ENUMS[model])
    try:
        member = getattr(enum, path_or_enum)
    except AttributeError:
        raise ConversionError(f"{path_or_enum!r} is neither a file nor a member of {enum.__name__}") from None
    return member.get_state_dict(progress=True)


def written_by_convert(path: str) -> bool:
    """Whether ``path`` is a checkpoint ``convert`` wrote (its ``source`` names torchvision's
    enum): the output guard lets a new conversion replace only such a file."""
    from .engine.checkpoint import CheckpointError, load_checkpoint
    try:
        source = load_checkpoint(path).get("source")
    except (CheckpointError, OSError, AttributeError):
        return False
    return isinstance(source, str) and source.startswith("torchvision ") and any(
        source.endswith(e) for e in ENUMS.values())


def convert(source: str, model: str, output: str) -> str:
    """Convert and write atomically; returns ``output``."""
    from .engine.checkpoint import save_atomic
    state = load_torchvision_state(source, model)
    save_atomic(from_torchvision(state, model), output)
    return output


__all__ = ["from_torchvision", "convert", "coco_classes", "ConversionError", "written_by_convert"]
