"""Classification losses for imbalanced data, shared by the heads that classify (images, pixels):
cross-entropy with optional class weights, and the focal loss (Lin et al. 2017).

Class weights come from the training data's class counts (``class_weights``): inverse frequency,
or Cui et al. 2019's "effective number of samples" ``(1 - beta^n) / (1 - beta)``, which grows
more slowly than ``n`` so that a class ten times as frequent is not weighted ten times lower.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import ranged


@dataclass
class LossConfig:
    """A head's classification loss (``model.heads.<name>.loss``)."""

    kind: Literal["ce", "focal"] = "ce"
    gamma: float = ranged(2.0, ge=0)  # focal: the (1 - p_t)^gamma factor's exponent
    # none: every class alike; inverse: 1 / count; effective: 1 / Cui et al.'s effective number
    # of samples, with beta (counts from the training data, written to the run's class_counts.json)
    class_weight: Literal["none", "inverse", "effective"] = "none"
    beta: float = ranged(0.999, ge=0, le=1)


def class_weights(counts: Tensor, mode: str, beta: float = 0.999) -> Optional[Tensor]:
    """Per-class weights ``[K]`` from training counts ``[K]``, scaled to a mean of 1 over the
    classes (so the loss keeps its size); None for ``mode`` "none". A class with no samples gets
    the largest weight of the others: it is the rarest there is."""
    if mode == "none":
        return None
    n = counts.double().clamp(min=0)
    if mode == "inverse":
        w = 1.0 / n
    elif mode == "effective":
        w = (1.0 - beta) / (1.0 - beta ** n) if beta < 1 else 1.0 / n
    else:
        raise ValueError(f"unknown class_weight {mode!r}: none, inverse or effective")
    finite = torch.isfinite(w) & (n > 0)
    if not finite.any():
        return torch.ones_like(n, dtype=torch.float32)
    w = torch.where(finite, w, w[finite].max())
    return (w / w.mean()).float()


def classification_loss(logits: Tensor, target: Tensor, loss: str = "ce", gamma: float = 2.0,
                        weight: Optional[Tensor] = None, ignore_index: int = -100,
                        label_smoothing: float = 0.0) -> Tensor:
    """Mean loss of ``logits`` ``[N, C, ...]`` against class indices ``target`` ``[N, ...]``.

    ``ce``: ``F.cross_entropy`` (weighted mean when ``weight`` is given). ``focal``: each term
    scaled by ``(1 - p_t)^gamma`` (gamma 0 is cross-entropy), weighted and averaged the way
    weighted cross-entropy is (divided by the weights of the labelled targets).
    """
    if weight is not None:
        weight = weight.to(device=logits.device, dtype=logits.dtype)
    if loss == "ce":
        return F.cross_entropy(logits, target, weight=weight, ignore_index=ignore_index,
                               label_smoothing=label_smoothing)
    log_p = F.log_softmax(logits, dim=1)
    valid = target != ignore_index
    safe = torch.where(valid, target, torch.zeros_like(target))
    log_pt = log_p.gather(1, safe.unsqueeze(1)).squeeze(1)
    term = -((1.0 - log_pt.exp()).clamp(min=0) ** gamma) * log_pt
    w = weight[safe] if weight is not None else torch.ones_like(term)
    w = w * valid
    return (term * w).sum() / w.sum().clamp(min=1e-12)


class ClassWeightedLoss:
    """Mixin of a head whose loss is ``classification_loss`` over ``num_outputs`` classes: keeps
    its ``LossConfig`` and the class weights, which the trainer sets from the training data's
    counts (``set_class_counts``) when ``class_weight`` asks for them.

    ``count_kind`` says what the trainer counts per class: "images" (image labels) or "pixels"
    (annotated area, background first).
    """

    count_kind = "images"

    def init_loss(self, loss: Optional[LossConfig], num_outputs: int) -> None:
        self.loss_settings = loss if loss is not None else LossConfig()
        self.register_buffer("class_weight", torch.ones(num_outputs), persistent=False)

    @property
    def class_weighted(self) -> bool:
        return self.loss_settings.class_weight != "none"

    def set_class_counts(self, counts) -> None:
        """Class weights from training counts (``[num_outputs]``, in the head's class order)."""
        counts = torch.as_tensor(counts, dtype=torch.float64)
        if counts.shape != self.class_weight.shape:
            raise ValueError(f"class counts for {self.class_weight.numel()} classes expected, got "
                             f"{counts.numel()}")
        w = class_weights(counts, self.loss_settings.class_weight, self.loss_settings.beta)
        if w is not None:
            self.class_weight.copy_(w)

    def classification_loss(self, logits: Tensor, target: Tensor, ignore_index: int = -100,
                            label_smoothing: float = 0.0) -> Tensor:
        s = self.loss_settings
        return classification_loss(logits, target, s.kind, s.gamma,
                                   self.class_weight if self.class_weighted else None,
                                   ignore_index, label_smoothing)
