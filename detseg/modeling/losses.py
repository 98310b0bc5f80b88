"""Classification losses for imbalanced data, shared by the heads that classify (images, pixels,
regions, windows): cross-entropy with optional class weights, the focal loss (Lin et al. 2017),
and for softmax classifiers over classes the Seesaw loss (Wang et al. 2021).

Class weights come from the training data's class counts (``class_weights``): inverse frequency,
or Cui et al. 2019's "effective number of samples" ``(1 - beta^n) / (1 - beta)``, which grows
more slowly than ``n`` so that a class ten times as frequent is not weighted ten times lower.
Deferred re-weighting (Cao et al. 2019, "LDAM ... DRW"): with ``class_weight_from`` the weights
apply only from that share of training on (``detseg.engine.hooks.DeferredReweighting`` switches
them), so that the features are first learnt from the plain loss, which a weighted one slows.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import ranged

logger = logging.getLogger(__name__)


@dataclass
class LossConfig:
    """A head's classification loss (``model.heads.<name>.loss``)."""

    # seesaw: region, window and image classifiers only (a pixel's class is not a sample count)
    kind: Literal["ce", "focal", "seesaw"] = "ce"
    gamma: float = ranged(2.0, ge=0)  # focal: the (1 - p_t)^gamma factor's exponent
    # none: every class alike; inverse: 1 / count; effective: 1 / Cui et al.'s effective number
    # of samples, with beta (counts from the training data, written to the run's class_counts.json);
    # beta must be near 1 - 1 / (the counts): for FCN's pixel counts 0.999 weighs every class alike
    class_weight: Literal["none", "inverse", "effective"] = "none"
    beta: float = ranged(0.999, ge=0, le=1)
    # deferred re-weighting: the class weights apply from this share of solver.max_iter on (Cao et
    # al. 2019 switch at 0.8, with the last step of the schedule); 0: from the first step
    class_weight_from: float = ranged(0.0, ge=0, le=1)
    # seesaw: mitigation exponent p on the count ratio, compensation exponent q on the score ratio
    seesaw_p: float = ranged(0.8, ge=0)
    seesaw_q: float = ranged(2.0, ge=0)


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
    if mode == "effective" and len(w) > 1 and float(w.max() / w.min()) < 1.01:
        # beta^n vanishes for every class once n >> 1 / (1 - beta): each effective number is then
        # 1 / (1 - beta), whatever the counts (pixel counts always are that large)
        logger.warning("class_weight: effective with beta=%g weighs every class alike here: the smallest "
                       "count, %d, is far above 1 / (1 - beta) = %d. Set beta closer to 1 (1 - 1/%d: "
                       "%.8f), or class_weight: inverse", beta, int(n.min()), round(1 / (1 - beta)),
                       int(n.min()), 1 - 1 / max(float(n.min()), 1.0))
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


def seesaw_loss(logits: Tensor, target: Tensor, counts: Tensor, p: float = 0.8, q: float = 2.0,
                background: Optional[int] = None, weight: Optional[Tensor] = None) -> Tensor:
    """Seesaw loss (Wang et al. 2021, "Seesaw Loss for Long-Tailed Instance Segmentation"): the
    cross-entropy of ``logits`` ``[N, C]`` against ``target`` ``[N]`` with every other class's
    term in the softmax denominator scaled by ``S_ij = M_ij * C_ij`` (i the sample's class):

    - mitigation ``M_ij = (N_j / N_i)^p`` where class j has seen fewer samples than i (``counts``
      ``[C]``, cumulative), else 1: a frequent class's samples push a rare class's score down less;
    - compensation ``C_ij = (sigma_j / sigma_i)^q`` where the softmax gives j more than i, else 1:
      a wrong class that outscores the true one is pushed down harder.

    ``background``: the index of a background class, whose samples take the plain cross-entropy
    and whose column is never scaled (the paper trains objectness apart; our region heads keep
    one softmax with a background column). ``weight`` ``[C]``: class weights, as in
    ``F.cross_entropy``. Returns the mean (weighted mean) over the samples.
    """
    n, c = logits.shape
    cls = torch.arange(c, device=logits.device)
    n_i = counts.to(logits.device, torch.float32).clamp(min=1)
    ratio = n_i[None, :] / n_i[:, None]                       # [C, C]: N_j / N_i
    mitigation = torch.where(ratio < 1, ratio.pow(p), torch.ones_like(ratio))[target]  # [N, C]
    probs = logits.detach().float().softmax(dim=1)
    own = probs.gather(1, target[:, None]).clamp(min=1e-12)
    score_ratio = probs / own
    compensation = torch.where(score_ratio > 1, score_ratio.pow(q), torch.ones_like(score_ratio))
    factor = mitigation * compensation
    others = cls[None, :] != target[:, None]
    if background is not None:
        # background samples and the background column keep the plain softmax
        others = others & (target[:, None] != background) & (cls[None, :] != background)
    adjusted = logits + torch.where(others, factor.log(), torch.zeros_like(factor)).to(logits.dtype)
    if weight is not None:
        weight = weight.to(device=logits.device, dtype=logits.dtype)
    return F.cross_entropy(adjusted, target, weight=weight)


class ClassWeightedLoss:
    """Mixin of a head whose loss is ``classification_loss`` over ``num_outputs`` classes: keeps
    its ``LossConfig`` and the class weights, which the trainer sets from the training data's
    counts (``set_class_counts``) when ``class_weight`` asks for them.

    ``count_kind`` says what the trainer counts per class: "images" (image labels) or "pixels"
    (annotated area, background first).
    """

    count_kind = "images"
    # a background output after the K classes (region and window classifiers): its weight is 1,
    # the classes' weights come from the K counts; None: every output is a counted class
    background_last = False

    def init_loss(self, loss: Optional[LossConfig], num_outputs: int) -> None:
        self.loss_settings = loss if loss is not None else LossConfig()
        if self.loss_settings.kind == "seesaw" and self.count_kind == "pixels":
            raise ValueError(f"{type(self).__name__}: the seesaw loss is for region, window and image "
                             f"classifiers (it counts samples); a pixel head takes ce or focal")
        self.register_buffer("class_weight", torch.ones(num_outputs), persistent=False)
        # whether the class weights apply at this step: the trainer's DeferredReweighting hook
        # sets it from loss.class_weight_from (without the hook: from the start)
        self.class_weight_active = True
        if self.loss_settings.kind == "seesaw":
            # Seesaw's cumulative sample counts, from the labels trained on so far (as in the
            # paper: counted online, not from the dataset; a resumed run counts again)
            self.register_buffer("seesaw_counts", torch.zeros(num_outputs, dtype=torch.float64),
                                 persistent=False)

    @property
    def class_weighted(self) -> bool:
        """The loss asks for class weights (they are counted), whether or not they apply yet."""
        return self.loss_settings.class_weight != "none"

    @property
    def applied_class_weight(self) -> Optional[Tensor]:
        """The class weights ``[num_outputs]`` that apply to this step's loss, or None."""
        return self.class_weight if self.class_weighted and self.class_weight_active else None

    def class_weight_start(self, max_iter: int) -> int:
        """The first step (0-based) whose loss takes the class weights, of ``max_iter``."""
        return round(self.loss_settings.class_weight_from * max_iter)

    def set_class_counts(self, counts) -> None:
        """Class weights from training counts (``[num_outputs]``, in the head's class order)."""
        counts = torch.as_tensor(counts, dtype=torch.float64)
        expected = self.class_weight.numel() - int(self.background_last)
        if counts.numel() != expected:
            raise ValueError(f"class counts for {expected} classes expected, got {counts.numel()}")
        w = class_weights(counts, self.loss_settings.class_weight, self.loss_settings.beta)
        if w is not None:
            if self.background_last:
                w = torch.cat([w, w.new_ones(1)])
            self.class_weight.copy_(w)

    def classification_loss(self, logits: Tensor, target: Tensor, ignore_index: int = -100,
                            label_smoothing: float = 0.0) -> Tensor:
        s = self.loss_settings
        weight = self.applied_class_weight
        if s.kind == "seesaw":
            if self.training:
                self.seesaw_counts += torch.bincount(target.flatten(), minlength=len(self.seesaw_counts)).to(
                    self.seesaw_counts)
            background = len(self.seesaw_counts) - 1 if self.background_last else None
            return seesaw_loss(logits, target, self.seesaw_counts, s.seesaw_p, s.seesaw_q, background, weight)
        return classification_loss(logits, target, s.kind, s.gamma, weight, ignore_index, label_smoothing)
