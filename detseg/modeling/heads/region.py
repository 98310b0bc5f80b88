"""The region head (``type: region``): proposals in, each proposal pooled from the shared feature
map by an injected pooler, fc layers, softmax (or per-class SVM) classification, class-specific box
regression, class-wise NMS out; with a mask branch, Mask R-CNN.

The pooler makes the method (``detseg.modeling.poolers``): SPP is SPPNet (He et al. 2014); RoI
pooling is Fast R-CNN (Girshick 2015), Faster R-CNN with an RPN as the proposal source; RoIAlign
(from the FPN level each box picks) is Mask R-CNN's. R-CNN (``heads/rcnn.py``) is this head with
warped crops run through the CNN in place of the pooler.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_iou

from ...config import ranged
from ...structures import Batch, Instances
from ..backbones import coarsest
from ..box_coder import BoxCoder
from ..class_layout import PER_CLASS
from ..losses import ClassWeightedLoss, LossConfig
from ..poolers import PoolerConfig, SPPPoolerConfig, build_pooler, pooler_features
from ..proposals import ProposalConfig, build_proposals
from ..sampling import match, sample, sampled_targets
from .base import Head
from .box_predictor import BoxPredictor, classification_and_box_losses, deltas_to_boxes, detect
from .mask import MaskConfig, MaskHead


@dataclass
class ProposalHeadConfig:
    """What the two proposal-based heads (region, rcnn) share: proposals, fc layers, sampling,
    classifier, test-time filtering."""

    feature: Optional[str] = None  # backbone map to read (default: the coarsest)
    proposals: ProposalConfig = field(default_factory=ProposalConfig)
    fc_dims: list[int] = field(default_factory=lambda: [1024, 1024])
    dropout: float = ranged(0.0, ge=0, le=1)
    batch_size_per_image: int = ranged(128, ge=1)
    fg_fraction: float = ranged(0.25, ge=0, le=1)
    fg_iou: float = 0.5
    bg_iou: float = 0.5
    bg_iou_low: float = 0.0
    reg_iou: Optional[float] = None  # proposals training the box regressor (default fg_iou)
    min_box_size: float = 0.0  # test time: smaller boxes are dropped
    classifier: Literal["softmax", "svm"] = "softmax"
    # the softmax classifier's loss: cross-entropy, focal or seesaw, optionally class-weighted by
    # the training instances per class (background weighted 1)
    loss: LossConfig = field(default_factory=LossConfig)
    svm_neg_iou: float = 0.3
    svm_weight_decay: float = ranged(1e-4, ge=0)  # L2 on the SVM weights, inside the hinge loss
    score_thresh: float = 0.05
    nms_thresh: float = 0.5
    detections_per_image: int = 100


@dataclass
class RegionHeadConfig(ProposalHeadConfig):
    """A region head on the shared features (``type: region``): SPPNet, Fast / Faster R-CNN, and
    Mask R-CNN with ``mask`` set."""

    type: Literal["region"] = "region"
    pooler: PoolerConfig = field(default_factory=SPPPoolerConfig)  # see detseg.modeling.poolers
    mask: Optional[MaskConfig] = None  # Mask R-CNN's mask branch; null: boxes only


class SampledRoIs(NamedTuple):
    """One image's training sample of RoIs (R rows, foreground first)."""

    rois: Tensor  # [R, 4] boxes, ground truth included
    labels: Tensor  # [R] class in 0..K-1, K = background
    box_targets: Tensor  # [R, 4] regression targets (zero for background)
    regress: Tensor  # [R] bool: trains the box regressor (IoU >= reg_iou)
    is_gt: Tensor  # [R] bool: a ground-truth box itself
    gt_index: Tensor  # [R] the matched ground-truth box of foreground rows, -1 for background


def mlp(in_features: int, dims: list[int], dropout: float = 0.0) -> nn.Sequential:
    layers: list[nn.Module] = []
    for d in dims:
        layers += [nn.Linear(in_features, d), nn.ReLU(inplace=True)]
        if dropout:
            layers.append(nn.Dropout(dropout))
        in_features = d
    return nn.Sequential(*layers)


def hard_negatives(scores: Tensor, negative: Tensor, margin: float = 1.0) -> Tensor:
    """Indices of negatives that violate the SVM margin (score > -margin), as in R-CNN's mining.

    Args:
        scores: ``Tensor[N]`` SVM scores of one class; negative: ``Tensor[N]`` bool.
    """
    return torch.nonzero(negative & (scores > -margin)).flatten()


class RegionHead(ClassWeightedLoss, Head):
    """Proposals pooled from the shared features, then fc layers, classification, box regression.

    Args (keyword-only):
        proposals: a proposal source module (``detseg.modeling.proposals``).
        pooler: a region pooler (``detseg.modeling.poolers``; ``forward(features, boxes,
            image_sizes) -> Tensor[sum R_i, pooler.out_features]``). None only in a subclass that
            overrides ``region_features`` and gives ``in_features`` (R-CNN).
        num_classes: K.
        in_features: width of ``region_features``' output (default: the pooler's).
        fc_dims: hidden fc layers (R-CNN's fc6, fc7).
        batch_size_per_image, fg_fraction: RoIs sampled per training image, foreground share.
        fg_iou: proposals with IoU >= this are foreground; below ``bg_iou`` (and >= ``bg_iou_low``)
            background.
        reg_iou: only proposals with IoU >= this train the box regressor (R-CNN: 0.6).
        loss: the softmax classifier's ``LossConfig`` (ce, focal or seesaw; class weights from
            the training instances per class).
        classifier: ``"softmax"`` or ``"svm"`` (per-class linear SVMs on the detached fc features,
            positives = ground-truth boxes, negatives = proposals with IoU < ``svm_neg_iou`` to
            every box of that class, hard-negative mined).
        score_thresh, nms_thresh, detections_per_image, min_box_size: test-time filtering.
        mask_head: optional ``MaskHead`` fed with the positive RoIs in training and with the
            final detections at test time (needs the shared feature map).
    """

    config_class = RegionHeadConfig
    # constructor arguments that are built objects, not settings (``from_config`` makes them)
    built_arguments = ("proposals", "pooler", "num_classes", "in_features", "box_coder", "mask_head")
    consumed_settings = ("proposals", "pooler", "mask", "feature")
    count_kind = "instances"
    background_last = True

    def __init__(self, *, proposals: nn.Module, num_classes: int, pooler: Optional[nn.Module] = None,
                 in_features: Optional[int] = None,
                 fc_dims: tuple[int, ...] = (1024, 1024), dropout: float = 0.0,
                 batch_size_per_image: int = 128, fg_fraction: float = 0.25, fg_iou: float = 0.5,
                 bg_iou: float = 0.5, bg_iou_low: float = 0.0, reg_iou: Optional[float] = None,
                 classifier: str = "softmax", svm_neg_iou: float = 0.3, svm_weight_decay: float = 1e-4,
                 score_thresh: float = 0.05, nms_thresh: float = 0.5, detections_per_image: int = 100,
                 box_coder: Optional[BoxCoder] = None, mask_head: Optional[nn.Module] = None,
                 min_box_size: float = 0.0, loss: Optional[LossConfig] = None):
        super().__init__()
        self.init_loss(loss, num_classes + 1)
        if classifier not in ("softmax", "svm"):
            raise ValueError(f"classifier must be 'softmax' or 'svm', got {classifier!r}")
        if in_features is None:
            if pooler is None:
                raise TypeError("RegionHead needs a pooler (or a subclass's in_features)")
            in_features = pooler.out_features
        self.proposals = proposals
        self.pooler = pooler
        self.num_classes = num_classes
        self.in_features = in_features
        self.fc = mlp(in_features, list(fc_dims), dropout)
        width = fc_dims[-1] if fc_dims else in_features
        self.predictor = BoxPredictor(in_features=width, num_classes=num_classes)
        self.classifier = classifier
        self.svm = nn.Linear(width, num_classes) if classifier == "svm" else None
        self.svm_neg_iou, self.svm_weight_decay = svm_neg_iou, svm_weight_decay
        self.batch_size_per_image, self.fg_fraction = batch_size_per_image, fg_fraction
        self.fg_iou, self.bg_iou, self.bg_iou_low = fg_iou, bg_iou, bg_iou_low
        self.reg_iou = fg_iou if reg_iou is None else reg_iou
        self.score_thresh, self.nms_thresh = score_thresh, nms_thresh
        self.detections_per_image = detections_per_image
        self.coder = box_coder or BoxCoder()
        self.mask_head = mask_head
        self.min_box_size = min_box_size

    @classmethod
    def from_config(cls, settings: RegionHeadConfig, backbone: nn.Module, num_classes: int) -> "RegionHead":
        shapes = backbone.output_shape()
        s = settings
        feature = pooler_features(s.pooler, s.feature or coarsest(shapes))[0]
        if feature not in shapes:
            raise ValueError(f"region head: backbone has no feature {feature!r}; it has {sorted(shapes)}")
        # The proposal source first, then the mask branch, then this head's own layers: the order
        # the parameters are drawn in (a seeded run initialises them as it always did).
        proposals = build_proposals(s.proposals, shapes, feature)
        mask_head = None if s.mask is None else MaskHead.from_config(s.mask, shapes, num_classes)
        return cls(proposals=proposals, pooler=build_pooler(s.pooler, shapes, s.feature or feature),
                   num_classes=num_classes, mask_head=mask_head, **cls.settings_kwargs(s))

    @property
    def predicts_masks(self) -> bool:
        return self.mask_head is not None

    @classmethod
    def predicts_masks_for(cls, settings: RegionHeadConfig) -> bool:
        return settings.mask is not None

    def parts(self) -> dict[str, str]:
        """The learnt proposal network (an RPN; selective search and windows learn nothing) and
        the mask branch, where present."""
        out = {}
        if any(True for _ in self.proposals.parameters()):
            out["rpn"] = "proposals"
        if self.mask_head is not None:
            out["mask"] = "mask_head"
        return out

    def class_axes(self) -> dict:
        """Class-dependent tensors of its own (the predictor and mask head declare theirs): the
        per-class SVMs."""
        if self.svm is None:
            return {}
        return {"svm.weight": {0: PER_CLASS}, "svm.bias": {0: PER_CLASS}}

    @classmethod
    def proposal_settings(cls, settings):
        return settings.proposals

    def proposal_source(self) -> nn.Module:
        return self.proposals

    def region_features(self, features: Optional[dict], batch, boxes: list[Tensor], **kwargs) -> Tensor:
        """Feature vectors ``Tensor[sum R_i, in_features]`` for boxes (list of ``Tensor[R_i, 4]``)."""
        return self.pooler(features, boxes, batch.image_sizes)

    # -- training -----------------------------------------------------------------------------
    def sample_rois(self, proposals: list[Tensor], targets: list[dict]) -> list[SampledRoIs]:
        """Add ground truth to the proposals, label by IoU, sample: one ``SampledRoIs`` per image."""
        out = []
        for props, t in zip(proposals, targets):
            gt = t["boxes"].to(props.device)
            gt_labels = t["labels"].to(props.device)
            cand = torch.cat([gt, props])
            matched, best = match(cand, gt, fg_iou=self.fg_iou, bg_iou=self.bg_iou,
                                  bg_iou_low=self.bg_iou_low, ignore=t.get("ignore_boxes"))
            fg, bg = sample(matched, self.batch_size_per_image, self.fg_fraction)
            if self.classifier == "svm":  # every ground-truth box is an SVM positive
                fg = torch.cat([torch.arange(len(gt), device=fg.device), fg[fg >= len(gt)]])
            sel, labels, targets_ = sampled_targets(cand, gt, gt_labels, matched, fg, bg, self.coder,
                                                    self.num_classes)
            rois = cand[sel]
            regress = torch.zeros(len(sel), dtype=torch.bool, device=props.device)
            regress[: len(fg)] = best[fg] >= self.reg_iou
            is_gt = sel < len(gt)
            gt_index = torch.full((len(sel),), -1, dtype=torch.long, device=props.device)
            gt_index[: len(fg)] = matched[fg]
            out.append(SampledRoIs(rois, labels, targets_, regress, is_gt, gt_index))
        return out

    def forward_train(self, features: Optional[dict], batch, **kwargs) -> dict[str, Tensor]:
        batch = Batch.of(batch)  # a plain dict from one's own pipeline, read as a Batch
        proposals, losses = self.proposals(features, batch)
        sampled = self.sample_rois(proposals, batch.targets)
        rois = [s.rois for s in sampled]
        x = self.fc(self.region_features(features, batch, rois, **kwargs))
        logits, deltas = self.predictor(x)
        labels = torch.cat([s.labels for s in sampled])
        losses.update(classification_and_box_losses(
            logits, deltas, labels, torch.cat([s.box_targets for s in sampled]),
            torch.cat([s.regress for s in sampled]), cls_loss=self.classification_loss))
        if self.svm is not None:
            losses["loss_svm"] = self.svm_loss(x.detach(), rois, sampled, batch.targets)
        if self.mask_head is not None:
            fg = [s.gt_index >= 0 for s in sampled]
            if any("masks" not in t for t in batch.targets):
                raise ValueError("the mask head needs ground-truth masks: build the dataset with_masks=True")
            losses["loss_mask"] = self.mask_head.loss(
                features, [s.rois[f] for s, f in zip(sampled, fg)], [s.labels[f] for s, f in zip(sampled, fg)],
                [s.gt_index[f] for s, f in zip(sampled, fg)], [t["masks"] for t in batch.targets],
                batch.image_sizes)
        return losses

    def svm_loss(self, x: Tensor, rois: list[Tensor], sampled: list[SampledRoIs],
                 targets: list[dict]) -> Tensor:
        """Hinge loss of the per-class SVMs on hard-mined negatives, plus L2 on their weights."""
        scores = self.svm(x)  # [R, K]
        is_gt = torch.cat([s.is_gt for s in sampled])
        labels = torch.cat([s.labels for s in sampled])
        # IoU of each RoI with the ground truth of each class: negatives are decided per class.
        iou_per_class = []
        for r, t in zip(rois, targets):
            m = torch.zeros(len(r), self.num_classes, device=x.device)
            gt = t["boxes"].to(r.device)
            if len(gt):
                iou = box_iou(r, gt)  # [R, G]
                m.scatter_reduce_(1, t["labels"].to(r.device)[None].expand_as(iou), iou, "amax")
            iou_per_class.append(m)
        iou_c = torch.cat(iou_per_class)
        terms, count = [], 0
        for c in range(self.num_classes):
            pos = is_gt & (labels == c)
            hard = hard_negatives(scores[:, c].detach(), iou_c[:, c] < self.svm_neg_iou)
            terms.append(F.relu(1 - scores[pos, c]).sum() + F.relu(1 + scores[hard, c]).sum())
            count += int(pos.sum()) + hard.numel()
        hinge = torch.stack(terms).sum() / max(1, count)
        return hinge + 0.5 * self.svm_weight_decay * self.svm.weight.pow(2).sum()

    # -- inference ----------------------------------------------------------------------------
    def class_scores(self, x: Tensor, logits: Tensor) -> tuple[Tensor, Tensor]:
        """(``Tensor[R, K]`` scores, ``Tensor[R, K]`` what they were computed from): softmax
        probabilities of the logits, or SVM margins squashed to (0, 1) by a sigmoid (monotone, so
        rankings and AP are those of the raw margins) and those margins."""
        if self.svm is not None:
            margins = self.svm(x)
            return torch.sigmoid(margins), margins
        return F.softmax(logits, dim=1)[:, : self.num_classes], logits[:, : self.num_classes]

    def forward_test(self, features: Optional[dict], batch, **kwargs) -> list[Instances]:
        batch = Batch.of(batch)  # a plain dict from one's own pipeline, read as a Batch
        proposals, _ = self.proposals(features, batch)
        results = self.predict(features, batch, proposals, **kwargs)
        if self.mask_head is not None:
            results = self.mask_head.predict(features, results)
        return results

    def predict(self, features, batch, proposals: list[Tensor], **kwargs) -> list[Instances]:
        """Detections for given proposals (one ``Instances`` per image, resized-image pixels)."""
        x = self.fc(self.region_features(features, batch, proposals, **kwargs))
        logits, deltas = self.predictor(x)
        scores, raw = self.class_scores(x, logits)
        boxes = deltas_to_boxes(self.coder, deltas, torch.cat(proposals))
        # per-image slices by shape, not len(): exported graphs have symbolic proposal counts
        out, start = [], 0
        for props, hw in zip(proposals, batch.image_sizes):
            n = props.shape[0]
            rows = slice(None) if len(proposals) == 1 else slice(start, start + n)
            out.append(detect(boxes[rows], scores[rows], hw, logits=raw[rows],
                              score_thresh=self.score_thresh, nms_thresh=self.nms_thresh,
                              max_detections=self.detections_per_image, min_size=self.min_box_size))
            start += n
        return out

