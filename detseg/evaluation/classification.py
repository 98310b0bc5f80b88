"""Image classification metrics: top-1 / top-5 accuracy, per-class and balanced accuracy, and the
confusion matrix (``classification_confusion.png`` through ``detseg.visualize.write_diagnostics``)."""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from ..structures import Batch


class ClassificationEvaluator:
    """Accumulates a ``[K, K]`` confusion matrix (rows = truth) and top-k hits over batches.

    Args:
        class_names: the K class names (label k is ``class_names[k]``).
        topk: the k of the "top-k" accuracies reported besides top-1 (5: ``top5``; values of
            k at or above K are left out: they are always 1).
    """

    def __init__(self, class_names: Sequence[str], topk: Sequence[int] = (5,)):
        self.names = list(class_names)
        self.k = len(self.names)
        self.topk = [t for t in topk if 1 < t < self.k]
        self.reset()

    def reset(self) -> None:
        self.conf = torch.zeros(self.k, self.k, dtype=torch.int64)
        self.hits = torch.zeros(len(self.topk), dtype=torch.int64)

    def update(self, scores: torch.Tensor, labels: torch.Tensor) -> None:
        """scores: ``[N, K]`` (probabilities or logits); labels: ``[N]`` int64 truth."""
        scores, labels = scores.detach().float().cpu(), labels.long().cpu()
        pred = scores.argmax(1)
        self.conf += torch.bincount(labels * self.k + pred, minlength=self.k * self.k).reshape(self.k, self.k)
        for i, t in enumerate(self.topk):
            top = scores.topk(t, dim=1).indices
            self.hits[i] += int((top == labels[:, None]).any(1).sum())

    def process(self, batch, scores: torch.Tensor) -> None:
        """Score a head's ``[B, K]`` output against ``batch.labels``."""
        batch = Batch.of(batch)
        self.update(scores, batch.labels)

    def evaluate(self) -> dict:
        """``compute()`` over every rank's images (counts summed under torchrun)."""
        from .. import comm as dist
        dist.all_reduce_sum(self.conf)
        dist.all_reduce_sum(self.hits)
        return self.compute()

    def compute(self) -> dict:
        """{"top1", "top<k>", "balanced_accuracy" (mean over classes with images of their
        recall), "per_class_accuracy": {class: recall or NaN}, "num_images",
        "diagnostics": {"labels", "confusion", "per_class_accuracy"}}."""
        conf = self.conf.double()
        total = conf.sum()
        per_class_n = conf.sum(1)
        recall = torch.where(per_class_n > 0, conf.diag() / per_class_n.clamp(min=1),
                             torch.full_like(per_class_n, float("nan")))
        seen = per_class_n > 0
        per_class = {name: float(v) for name, v in zip(self.names, recall.tolist())}
        nan = float("nan")
        out = {"top1": float(conf.diag().sum() / total) if total > 0 else nan}
        for t, h in zip(self.topk, self.hits.tolist()):
            out[f"top{t}"] = h / float(total) if total > 0 else nan
        out.update({
            "balanced_accuracy": float(recall[seen].mean()) if seen.any() else nan,
            "per_class_accuracy": per_class,
            "num_images": int(total),
            "diagnostics": {"labels": list(self.names), "confusion": self.conf.tolist(),
                            "per_class_accuracy": per_class, "kind": "classification"},
        })
        return out


def format_accuracy(per_class: dict, counts: Optional[Sequence[int]] = None) -> str:
    """A small table of per-class accuracy (and image counts), one line per class."""
    width = max([len(n) for n in per_class] + [5])
    lines = [f"{'class':<{width}}  accuracy" + ("  images" if counts is not None else "")]
    for i, (name, acc) in enumerate(per_class.items()):
        row = f"{name:<{width}}  {acc:8.3f}"
        if counts is not None:
            row += f"  {counts[i]:6d}"
        lines.append(row)
    return "\n".join(lines)
