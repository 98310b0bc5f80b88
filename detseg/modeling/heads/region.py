"""What R-CNN, SPPNet and Fast R-CNN share: proposals in, sampled RoIs, fc layers, softmax (or
per-class SVM) classification, class-specific box regression, class-wise NMS out.

Subclasses differ only in ``region_features``: how a box becomes a feature vector (a warped
crop run through the CNN for R-CNN, pooling of the shared feature map for SPPNet / Fast R-CNN).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_iou

from ...structures import Instances
from ..box_coder import BoxCoder
from ..class_layout import PER_CLASS
from ..sampling import match, sample, sampled_targets
from .base import Head
from .box_predictor import BoxPredictor, classification_and_box_losses, deltas_to_boxes, detect


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


class RegionHead(Head):
    """Base of the proposal-based heads.

    Args (keyword-only):
        proposals: a proposal source module (``detseg.modeling.proposals``).
        num_classes: K.
        in_features: width of ``region_features``' output.
        fc_dims: hidden fc layers (R-CNN's fc6, fc7).
        batch_size_per_image, fg_fraction: RoIs sampled per training image, foreground share.
        fg_iou: proposals with IoU >= this are foreground; below ``bg_iou`` (and >= ``bg_iou_low``)
            background.
        reg_iou: only proposals with IoU >= this train the box regressor (R-CNN: 0.6).
        classifier: ``"softmax"`` or ``"svm"`` (per-class linear SVMs on the detached fc features,
            positives = ground-truth boxes, negatives = proposals with IoU < ``svm_neg_iou`` to
            every box of that class, hard-negative mined).
        score_thresh, nms_thresh, detections_per_image, min_box_size: test-time filtering.
        mask_head: optional ``MaskHead`` fed with the positive RoIs in training and with the
            final detections at test time (needs the shared feature map).
    """

    def __init__(self, *, proposals: nn.Module, num_classes: int, in_features: int,
                 fc_dims: tuple[int, ...] = (1024, 1024), dropout: float = 0.0,
                 batch_size_per_image: int = 128, fg_fraction: float = 0.25, fg_iou: float = 0.5,
                 bg_iou: float = 0.5, bg_iou_low: float = 0.0, reg_iou: Optional[float] = None,
                 classifier: str = "softmax", svm_neg_iou: float = 0.3, svm_weight_decay: float = 1e-4,
                 score_thresh: float = 0.05, nms_thresh: float = 0.5, detections_per_image: int = 100,
                 box_coder: Optional[BoxCoder] = None, mask_head: Optional[nn.Module] = None,
                 min_box_size: float = 0.0):
        super().__init__()
        if classifier not in ("softmax", "svm"):
            raise ValueError(f"classifier must be 'softmax' or 'svm', got {classifier!r}")
        self.proposals = proposals
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

    @property
    def predicts_masks(self) -> bool:
        return self.mask_head is not None

    def class_axes(self) -> dict:
        """Class-dependent tensors of its own (the predictor and mask head declare theirs): the
        per-class SVMs."""
        if self.svm is None:
            return {}
        return {"svm.weight": {0: PER_CLASS}, "svm.bias": {0: PER_CLASS}}

    @classmethod
    def proposal_settings(cls, settings):
        return settings.proposals

    @staticmethod
    def settings_kwargs(settings) -> dict:
        """The keyword arguments of ``RegionHead`` that a ``_ProposalHeadConfig`` sets."""
        s = settings
        return dict(fc_dims=tuple(s.fc_dims), dropout=s.dropout, batch_size_per_image=s.batch_size_per_image,
                    fg_fraction=s.fg_fraction, fg_iou=s.fg_iou, bg_iou=s.bg_iou, bg_iou_low=s.bg_iou_low,
                    reg_iou=s.reg_iou, classifier=s.classifier, svm_neg_iou=s.svm_neg_iou,
                    score_thresh=s.score_thresh, nms_thresh=s.nms_thresh,
                    detections_per_image=s.detections_per_image, min_box_size=s.min_box_size)

    # -- to be provided by subclasses ---------------------------------------------------------
    def region_features(self, features: Optional[dict], batch: dict, boxes: list[Tensor],
                        **kwargs) -> Tensor:
        """Feature vectors ``Tensor[sum R_i, in_features]`` for boxes (list of ``Tensor[R_i, 4]``)."""
        raise NotImplementedError

    # -- training -----------------------------------------------------------------------------
    def sample_rois(self, proposals: list[Tensor], targets: list[dict]) -> tuple:
        """Add ground truth to the proposals, label by IoU, sample. Returns per-image lists of
        (rois [R, 4], labels [R] in 0..K, regression targets [R, 4], regress [R] bool, is_gt [R],
        gt_index [R]: the matched ground-truth box of foreground rows, -1 for background)."""
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
            out.append((rois, labels, targets_, regress, is_gt, gt_index))
        return out

    def forward_train(self, features: Optional[dict], batch: dict, **kwargs) -> dict[str, Tensor]:
        proposals, losses = self.proposals(features, batch)
        sampled = self.sample_rois(proposals, batch["targets"])
        rois = [s[0] for s in sampled]
        x = self.fc(self.region_features(features, batch, rois, **kwargs))
        logits, deltas = self.predictor(x)
        labels = torch.cat([s[1] for s in sampled])
        losses.update(classification_and_box_losses(
            logits, deltas, labels, torch.cat([s[2] for s in sampled]), torch.cat([s[3] for s in sampled])))
        if self.svm is not None:
            losses["loss_svm"] = self.svm_loss(x.detach(), rois, sampled, batch["targets"])
        if self.mask_head is not None:
            fg = [s[5] >= 0 for s in sampled]
            if any("masks" not in t for t in batch["targets"]):
                raise ValueError("the mask head needs ground-truth masks: build the dataset with_masks=True")
            losses["loss_mask"] = self.mask_head.loss(
                features, [s[0][f] for s, f in zip(sampled, fg)], [s[1][f] for s, f in zip(sampled, fg)],
                [s[5][f] for s, f in zip(sampled, fg)], [t["masks"] for t in batch["targets"]],
                batch["image_sizes"])
        return losses

    def svm_loss(self, x: Tensor, rois: list[Tensor], sampled: list, targets: list[dict]) -> Tensor:
        """Hinge loss of the per-class SVMs on hard-mined negatives, plus L2 on their weights."""
        scores = self.svm(x)  # [R, K]
        is_gt = torch.cat([s[4] for s in sampled])
        labels = torch.cat([s[1] for s in sampled])
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
    def class_scores(self, x: Tensor, logits: Tensor) -> Tensor:
        """``Tensor[R, K]``: softmax probabilities, or SVM margins squashed to (0, 1) by a
        sigmoid (monotone, so rankings and AP are those of the raw margins)."""
        if self.svm is not None:
            return torch.sigmoid(self.svm(x))
        return F.softmax(logits, dim=1)[:, : self.num_classes]

    def forward_test(self, features: Optional[dict], batch: dict, **kwargs) -> list[Instances]:
        proposals, _ = self.proposals(features, batch)
        results = self.predict(features, batch, proposals, **kwargs)
        if self.mask_head is not None:
            results = self.mask_head.predict(features, results)
        return results

    def predict(self, features, batch: dict, proposals: list[Tensor], **kwargs) -> list[Instances]:
        """Detections for given proposals (one ``Instances`` per image, resized-image pixels)."""
        x = self.fc(self.region_features(features, batch, proposals, **kwargs))
        logits, deltas = self.predictor(x)
        scores = self.class_scores(x, logits)
        boxes = deltas_to_boxes(self.coder, deltas, torch.cat(proposals))
        # per-image slices by shape, not len(): exported graphs have symbolic proposal counts
        out, start = [], 0
        for props, hw in zip(proposals, batch["image_sizes"]):
            n = props.shape[0]
            rows = slice(None) if len(proposals) == 1 else slice(start, start + n)
            out.append(detect(boxes[rows], scores[rows], hw,
                              score_thresh=self.score_thresh, nms_thresh=self.nms_thresh,
                              max_detections=self.detections_per_image, min_size=self.min_box_size))
            start += n
        return out

