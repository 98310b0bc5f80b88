"""Semantic segmentation metrics: mIoU and pixel accuracy from a confusion matrix."""
from __future__ import annotations

import torch

from ..structures import Batch, SEMANTIC_IGNORE as IGNORE


class SemSegEvaluator:
    """Accumulates a ``[K+1, K+1]`` confusion matrix (rows = truth) over batches.

    Args:
        num_outputs: number of semantic classes including background (K + 1).
        class_names: names of the K object classes (background is added in front).
        background: the name of value 0 ("things" for a panoptic model's stuff map).
    """

    def __init__(self, num_outputs: int, class_names: list[str] | None = None,
                 background: str = "background"):
        self.n = num_outputs
        self.names = [background] + list(class_names or [f"class{i}" for i in range(num_outputs - 1)])
        self.reset()

    def reset(self) -> None:
        self.conf = torch.zeros(self.n, self.n, dtype=torch.int64)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """pred, target: ``[H, W]`` (or any equal shape) integer maps; target 255 is ignored."""
        pred, target = pred.reshape(-1).long().cpu(), target.reshape(-1).long().cpu()
        keep = target != IGNORE
        idx = target[keep] * self.n + pred[keep]
        self.conf += torch.bincount(idx, minlength=self.n * self.n).reshape(self.n, self.n)

    def process(self, batch, logits: torch.Tensor) -> None:
        """Score ``logits`` ``[B, K+1, H, W]`` against ``batch.semantic``, each image cropped to
        its unpadded size (the network's input resolution)."""
        batch = Batch.of(batch)
        pred = logits.argmax(1).cpu()
        for i, (h, w) in enumerate(batch.image_sizes):
            self.update(pred[i, :h, :w], batch.semantic[i, :h, :w])

    def evaluate(self) -> dict:
        """``compute()`` over every rank's images (confusion matrices summed under torchrun)."""
        from .. import comm as dist
        dist.all_reduce_sum(self.conf)
        return self.compute()

    def merge(self, other_conf: torch.Tensor) -> None:
        self.conf += other_conf.to(self.conf)

    def compute(self) -> dict:
        """{"mIoU", "pixel_acc", "IoU": {class: IoU}} over classes present in truth or prediction."""
        conf = self.conf.double()
        tp = conf.diag()
        union = conf.sum(0) + conf.sum(1) - tp
        present = union > 0
        iou = torch.where(present, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
        total = conf.sum()
        per_class = {name: float(v) for name, v in zip(self.names, iou.tolist())}
        return {
            "mIoU": float(iou[present].mean()) if present.any() else float("nan"),
            "pixel_acc": float(tp.sum() / total) if total > 0 else float("nan"),
            "IoU": per_class,
            "diagnostics": {"labels": list(self.names), "confusion": self.conf.tolist(), "IoU": per_class},
        }

