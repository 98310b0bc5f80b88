"""Which pixels drove a score: Grad-CAM (Selvaraju et al. 2017) for a class, a pixel class or one
detection, on any head; HiResCAM, its form without the spatial average, is the default for a
detection (see ``grad_cam``).

Grad-CAM weighs a layer's activation maps ``A_k`` by the mean gradient of the chosen score over
each map, ``alpha_k = mean_ij dS / dA_k(i, j)``, and keeps the positive part of ``sum_k alpha_k A_k``,
upsampled to the image. The score ``S`` is the class logit for a classifier, the chosen class's
logits summed over the pixels predicted as that class for a semantic head (Vinogradova et al.
2020), and for an instance head the detection's class logit (``Instances.logits``: the score
before its softmax, as Grad-CAM's paper takes ``y^c`` before the softmax; ``score="probability"``
explains the softmax probability instead, whose gradient is scaled by ``1 - p`` and points away
from the other classes' evidence as much as towards this one's). Heads that run the CNN on warped crops
(R-CNN) have no image-wide activation map to weigh; for them the picture is the gradient of the
score with respect to the input pixels (Simonyan et al. 2014), named as such in the result.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..modeling.backbones import coarsest
from ..modeling.heads.base import CLASSES, SEMANTIC
from .features import find_module


@dataclass
class Saliency:
    """``heat``: ``[h, w]`` float32 in [0, 1] at the network input's size (unpadded); ``target``:
    what was explained (head, class name, score, box in the input's pixels for detections)."""

    heat: np.ndarray
    method: str  # "grad-cam", "hires-cam" or "input-gradient"
    layer: Optional[str]
    target: dict = field(default_factory=dict)


def default_layer(model: nn.Module) -> str:
    """The deepest map of the backbone's body (Grad-CAM's usual choice, the last convolutional
    stage): ``c5`` for a ResNet, and for an FPN the body's top stage, which every pyramid level
    reads through the top-down path (an FPN output level only sees detections made on it)."""
    backbone = model.backbone
    body = getattr(backbone, "body", backbone)
    prefix = "backbone.body" if body is not backbone else "backbone"
    if not hasattr(body, "stages"):
        raise ValueError("no default layer for this backbone; name one (`explain layers` lists them)")
    return f"{prefix}.stages.{coarsest(body.output_shape())}"


def _score(model: nn.Module, outputs: dict, features: Optional[dict], head_name: str,
           target: Union[None, int, str], class_names: list[str],
           score: str = "logit") -> tuple[torch.Tensor, dict]:
    """The scalar to explain and its description."""
    head = model.heads[head_name]
    pred = outputs[head_name]

    def class_index(n: int) -> int:
        """``target`` (a name or an index) as a class index below ``n``."""
        if isinstance(target, str):
            if target not in class_names:
                raise ValueError(f"unknown class {target!r}; the model's classes: {', '.join(class_names)}")
            return class_names.index(target)
        if not 0 <= target < n:
            raise ValueError(f"class index {target} is out of range (0..{n - 1})")
        return int(target)

    if head.output == CLASSES:
        logits = head.logits(features)[0] if hasattr(head, "logits") else pred[0].log()
        c = int(pred[0].argmax()) if target is None else class_index(logits.shape[0])
        return logits[c], {"head": head_name, "class": class_names[c], "score": float(pred[0, c].detach())}
    if head.output == SEMANTIC:
        logits = pred[0]  # [K + 1, H, W]; 0 is background
        labels = logits.argmax(0)
        if target is None:
            counts = torch.bincount(labels.flatten(), minlength=logits.shape[0])[1:]
            c = int(counts.argmax()) + 1 if int(counts.max()) > 0 else 1
        else:
            c = class_index(logits.shape[0] - 1) + 1
        where = labels == c
        score = logits[c][where].sum() if bool(where.any()) else logits[c].sum()
        return score, {"head": head_name, "class": class_names[c - 1], "pixels": int(where.sum())}
    inst = pred[0]
    if len(inst) == 0:
        raise ValueError(f"head {head_name!r} detected nothing on this image: no detection to explain")
    if target is None:
        i = int(inst.scores.argmax())
    elif isinstance(target, str):
        of_class = (inst.labels == class_index(len(class_names))).nonzero().flatten()
        if not len(of_class):
            raise ValueError(f"no {target!r} detection on this image")
        i = int(of_class[inst.scores[of_class].argmax()])
    else:
        if not 0 <= target < len(inst):
            raise ValueError(f"detection {target} is out of range: {len(inst)} detections")
        i = int(target)
    explained = inst.logits if score == "logit" and inst.logits is not None else inst.scores
    if not explained.requires_grad:
        raise ValueError(f"head {head_name!r}'s scores carry no gradient; nothing to explain")
    return explained[i], {"head": head_name, "class": class_names[int(inst.labels[i])],
                          "score": float(inst.scores[i].detach()),
                          "explained": "logit" if explained is inst.logits else "probability",
                          "box": [float(v) for v in inst.boxes[i].detach()], "index": i}


METHODS = ("grad-cam", "hires-cam", "input-gradient")
SCORES = ("logit", "probability")


def grad_cam(model: nn.Module, batch, class_names: list[str], *, head: Optional[str] = None,
             target: Union[None, int, str] = None, layer: Optional[str] = None,
             method: Optional[str] = None, score: str = "logit") -> Saliency:
    """Grad-CAM of one image's score (see the module's docstring).

    Args:
        model: a detseg ``Model``; batch: a collated one-image ``Batch``.
        class_names: the model's classes; head: which head's score (default: the first).
        target: a class name, or an index (a class for classifier / semantic heads, a detection
            for instance heads); default: the top class, the most frequent predicted class, the
            highest-scoring detection.
        layer: module path whose output is weighed (default ``default_layer``).
        method: ``"grad-cam"`` (each map weighed by its mean gradient), ``"hires-cam"`` (Draelos
            & Carin 2020: each cell by its own gradient, ``relu(sum_k dS/dA_k * A_k)``: Grad-CAM
            without the averaging, which keeps a detection's saliency on that instance rather
            than on every place the class's features fire) or ``"input-gradient"``; default:
            Grad-CAM for a class or a pixel class, HiResCAM for a detection (on a trained shapes
            Faster R-CNN, Grad-CAM put about as much of its mass in the detection's box as an
            even spread would, HiResCAM 4x as much: benchmarks/saliency.py). Crop-based heads get the input gradient
            whatever is asked; ``Saliency.method`` says which ran.
        score: for a detection, ``"logit"`` (its class score before the softmax, Grad-CAM's
            ``y^c``; the probability where a head keeps no logits) or ``"probability"``.
    """
    head = head or next(iter(model.heads))
    if head not in model.heads:
        raise ValueError(f"no head {head!r}; the model's heads: {', '.join(model.heads)}")
    if method is None:
        head_output = model.heads[head].output
        method = "grad-cam" if head_output in (CLASSES, SEMANTIC) else "hires-cam"
    if method not in METHODS:
        raise ValueError(f"saliency method must be one of {', '.join(METHODS)}, got {method!r}")
    if score not in SCORES:
        raise ValueError(f"saliency score must be one of {', '.join(SCORES)}, got {score!r}")
    model.eval()
    layer = layer or default_layer(model)
    module = find_module(model, layer)
    acts: list[torch.Tensor] = []
    feats: dict = {}
    h_layer = module.register_forward_hook(lambda m, i, o: acts.append(o if torch.is_tensor(o)
                                                                       else list(o.values())[-1]))
    h_feats = model.backbone.register_forward_hook(lambda m, i, o: feats.update(o))
    pixels_seen: list[torch.Tensor] = []
    preprocess = model.preprocess

    def keep_pixels(images):
        p = preprocess(images).requires_grad_(True)
        pixels_seen.append(p)
        return p

    model.preprocess = keep_pixels  # an instance attribute: this call only
    try:
        with torch.enable_grad():
            outputs = model(batch, panoptic=False)
            value, described = _score(model, outputs, feats or None, head, target, class_names, score)
            image_wide = (method != "input-gradient" and len(acts) == 1 and acts[0].dim() == 4
                          and acts[0].shape[0] == len(batch.images))
            wrt = acts[0] if image_wide else pixels_seen[0]
            if not value.requires_grad:
                raise ValueError(f"head {head!r}'s score does not depend on {layer}")
            grad, = torch.autograd.grad(value, wrt, allow_unused=True)
    finally:
        del model.preprocess
        h_layer.remove()
        h_feats.remove()
    h, w = batch.image_sizes[0]
    if grad is None:
        grad = torch.zeros_like(wrt)
    if image_wide:
        a, g = wrt.detach()[0].float(), grad[0].float()
        weights = g if method == "hires-cam" else g.mean(dim=(1, 2))[:, None, None]
        cam = F.relu((weights * a).sum(0))
        pad_h, pad_w = pixels_seen[0].shape[-2:]
        cam = F.interpolate(cam[None, None], size=(pad_h, pad_w), mode="bilinear", align_corners=False)[0, 0]
    else:
        cam = grad[0].abs().amax(0)
        method, layer = "input-gradient", None
    cam = cam[:h, :w]
    top = float(cam.max())
    heat = (cam / top if top > 0 else cam).cpu().numpy().astype(np.float32)
    return Saliency(heat, method, layer, described)


def mass_in_box(heat: np.ndarray, box) -> tuple[float, float]:
    """(share of the saliency mass inside ``box`` (x1, y1, x2, y2, ``heat``'s pixels), share of
    the image's area it covers): a saliency that points at the object has the first well above
    the second."""
    h, w = heat.shape
    x0, y0 = max(0, int(np.floor(box[0]))), max(0, int(np.floor(box[1])))
    x1, y1 = min(w, int(np.ceil(box[2]))), min(h, int(np.ceil(box[3])))
    total = float(heat.sum())
    inside = float(heat[y0:y1, x0:x1].sum()) if x1 > x0 and y1 > y0 else 0.0
    area = max(0, x1 - x0) * max(0, y1 - y0) / float(h * w)
    return (inside / total if total > 0 else 0.0), area


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """``image`` RGB uint8 ``[H, W, 3]`` with ``heat`` (any size, [0, 1]) as a jet colour map."""
    import cv2
    heat = cv2.resize(heat, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)
    colour = cv2.applyColorMap((np.clip(heat, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)[:, :, ::-1]
    return (image * (1 - alpha) + colour * alpha).astype(np.uint8)
