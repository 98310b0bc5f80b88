"""Classification and class-specific box regression on region features, their losses, and the
test-time step from scores and deltas to detections (class-wise NMS).

Shared by the R-CNN, SPPNet / Fast R-CNN and sliding-window heads. Background is index ``K``.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...structures import Instances, clip_boxes, nonempty
from ...ops.nms import batched_nms
from ..box_coder import BoxCoder
from ..class_layout import BOX_DELTAS, SCORES_BG_LAST, DeclaresClassAxes


class BoxPredictor(nn.Module, DeclaresClassAxes):
    """``Linear`` class scores (K + 1) and class-specific deltas (4K).

    Input ``Tensor[R, D]`` → (logits ``Tensor[R, K + 1]``, deltas ``Tensor[R, 4K]``).
    """

    def __init__(self, *, in_features: int, num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        self.cls_score = nn.Linear(in_features, num_classes + 1)
        self.bbox_pred = nn.Linear(in_features, 4 * num_classes)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    @staticmethod
    def class_axes() -> dict:
        """Class-dependent tensors (``detseg.modeling.class_layout``)."""
        return {"cls_score.weight": {0: SCORES_BG_LAST}, "cls_score.bias": {0: SCORES_BG_LAST},
                "bbox_pred.weight": {0: BOX_DELTAS}, "bbox_pred.bias": {0: BOX_DELTAS}}

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.cls_score(x), self.bbox_pred(x)


def classification_and_box_losses(logits: Tensor, deltas: Tensor, labels: Tensor, targets: Tensor,
                                  regress: Tensor, beta: float = 1.0,
                                  cls_loss: Optional[Callable[[Tensor, Tensor], Tensor]] = None
                                  ) -> dict[str, Tensor]:
    """Softmax cross entropy (or ``cls_loss(logits, labels)``, a mean over the rows: focal,
    class-weighted, seesaw) and class-specific smooth-L1 box loss.

    Args:
        logits: ``Tensor[R, K + 1]``; deltas: ``Tensor[R, 4K]``.
        labels: ``Tensor[R]`` in ``0..K`` (K = background).
        targets: ``Tensor[R, 4]`` encoded regression targets (used where ``regress``).
        regress: ``Tensor[R]`` bool, which rows train the box regressor.

    The box loss is summed over regressed rows and divided by R (all sampled rows), as in
    Fast R-CNN, so that it does not grow when a batch happens to hold few positives.
    """
    r = max(1, labels.numel())
    if cls_loss is None or labels.numel() == 0:
        loss_cls = F.cross_entropy(logits, labels, reduction="sum") / r
    else:
        loss_cls = cls_loss(logits, labels)
    idx = torch.nonzero(regress).flatten()
    if idx.numel() == 0:
        return {"loss_cls": loss_cls, "loss_box": deltas.sum() * 0.0}
    cols = labels[idx, None] * 4 + torch.arange(4, device=labels.device)
    pred = deltas[idx[:, None], cols]
    loss_box = F.smooth_l1_loss(pred, targets[idx], beta=beta, reduction="sum") / r
    return {"loss_cls": loss_cls, "loss_box": loss_box}


def detect(boxes: Tensor, scores: Tensor, image_size: tuple[int, int], *, score_thresh: float,
           nms_thresh: float, max_detections: int, min_size: float = 0.0,
           logits: Optional[Tensor] = None) -> Instances:
    """Class-wise NMS over per-class boxes.

    Args:
        boxes: ``Tensor[R, K, 4]`` (class-specific) or ``Tensor[R, 4]`` (shared by all classes).
        scores: ``Tensor[R, K]`` object-class scores (background column removed).
        image_size: (H, W) to clip boxes to.
        min_size: boxes not wider and taller than this (after clipping) are dropped.
        logits: ``Tensor[R, K]``, the scores before their softmax / sigmoid (optional): kept per
            detection in ``Instances.logits``.

    Returns:
        ``Instances`` with at most ``max_detections`` boxes, highest scores first.
    """
    r, k = scores.shape
    if boxes.dim() == 2:
        boxes = boxes[:, None, :].expand(r, k, 4)
    boxes = clip_boxes(boxes.reshape(-1, 4), image_size).reshape(r, k, 4)
    keep = scores > score_thresh
    rows, labels = torch.nonzero(keep, as_tuple=True)
    b, s = boxes[rows, labels], scores[rows, labels]
    z = None if logits is None else logits[rows, labels]
    ok = nonempty(b, min_size)
    b, s, labels = b[ok], s[ok], labels[ok]
    kept = batched_nms(b.float(), s.float(), labels, nms_thresh, max_keep=max_detections, num_classes=k,
                       search=True)
    return Instances(image_size, b[kept], s[kept], labels[kept], logits=None if z is None else z[ok][kept])


def deltas_to_boxes(coder: BoxCoder, deltas: Tensor, reference: Tensor) -> Tensor:
    """Decode ``Tensor[R, 4K]`` deltas against ``Tensor[R, 4]`` references → ``Tensor[R, K, 4]``."""
    # the class count from the width, not -1: an empty batch of RoIs reshapes too
    return coder.decode(deltas, reference).reshape(deltas.shape[0], deltas.shape[1] // 4, 4)
