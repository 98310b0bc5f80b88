"""Re-fitting a trained classifier on class-balanced features: SMOTE in feature space.

The last layer of a classifier reads feature vectors: the image classifier's embedding (what its
final linear layer reads), a region head's fc7 output (what R-CNN's per-class SVMs, or the
softmax, read). On long-tailed data that layer sees few vectors of the rare classes. This module
takes the trained network's feature vectors of the training data, makes new vectors of the rare
classes with SMOTE (Chawla et al. 2002: points on the segments between a sample and its nearest
same-class neighbours) or Borderline-SMOTE (Han et al. 2005: only from the samples near other
classes), both from imbalanced-learn, and fits the last layer again on the balanced set, the
rest of the network kept: classifier re-training in the manner of Kang et al. 2020 ("Decoupling
Representation and Classifier for Long-Tailed Recognition"), with SMOTE as the balancing.

The fits are scikit-learn's: multinomial logistic regression for a softmax layer, one-vs-rest
linear SVMs with the hinge loss (liblinear, R-CNN's own solver) for the SVMs.
"""
from __future__ import annotations

import logging
from typing import Optional

import numpy as np
import torch
from torch import nn

from ..structures import Batch

logger = logging.getLogger(__name__)

METHODS = ("smote", "borderline_smote")


def oversample(x: np.ndarray, y: np.ndarray, method: str = "smote", k_neighbors: int = 5,
               background: Optional[int] = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """New feature vectors for every class with fewer than the most frequent one.

    Args:
        x: ``[N, D]`` feature vectors; y: ``[N]`` class indices.
        method: ``"smote"`` or ``"borderline_smote"``.
        k_neighbors: same-class neighbours a new vector is drawn towards (fewer where a class
            has fewer other samples).
        background: a background class (region heads): neither raised nor the level the other
            classes are raised to; they are raised to the most frequent of them.

    Returns:
        (``[N', D]``, ``[N']``): the inputs followed by the synthetic vectors.

    Raises:
        ValueError: an unknown method, or a class to raise with fewer than two vectors (SMOTE
            draws between two samples of a class).
    """
    from imblearn.over_sampling import SMOTE, BorderlineSMOTE
    if method not in METHODS:
        raise ValueError(f"oversampling method must be one of {', '.join(METHODS)}, got {method!r}")
    classes, counts = np.unique(y, return_counts=True)
    objects = {int(c): int(n) for c, n in zip(classes, counts) if c != background}
    if not objects:
        return x, y
    target = max(objects.values())
    raise_to = {c: target for c, n in objects.items() if n < target}
    if not raise_to:
        return x, y
    few = [c for c in raise_to if objects[c] < 2]
    if few:
        raise ValueError(f"class {few[0]} has {objects[few[0]]} feature vector(s); SMOTE needs at least two "
                         f"of every class it raises")
    k = max(1, min(k_neighbors, min(objects[c] for c in raise_to) - 1))
    if method == "smote":
        sampler = SMOTE(sampling_strategy=raise_to, k_neighbors=k, random_state=seed)
    else:
        sampler = BorderlineSMOTE(sampling_strategy=raise_to, k_neighbors=k, random_state=seed,
                                  m_neighbors=max(1, min(10, len(y) - 1)))
    xr, yr = sampler.fit_resample(x, y)
    return np.asarray(xr, dtype=x.dtype), np.asarray(yr, dtype=y.dtype)


@torch.no_grad()
def classifier_features(model: nn.Module, head_name: str, batches, negatives_per_image: int = 16,
                        seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The feature vectors the head's last layer reads, with their classes, over ``batches``.

    Image classifier (``classify``): each image's embedding, labelled with the image's class.
    Region head (``region``, ``rcnn``): fc7 of every ground-truth box (its class) and of up to
    ``negatives_per_image`` of the model's own proposals overlapping no box by ``svm_neg_iou`` or
    more (background, index K), as R-CNN trains its SVMs.
    """
    from torchvision.ops import box_iou
    head = model.heads[head_name]
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    xs, ys = [], []
    for batch in batches:
        batch = Batch.of(batch)
        pixels = model.preprocess(batch.images)
        batch = batch.replace(pixels=pixels)
        features = model.backbone(pixels)
        if hasattr(head, "embed"):
            xs.append(head.embed(features).float().cpu())
            ys.append(batch.labels.cpu())
            continue
        if not hasattr(head, "region_features"):
            raise ValueError(f"head {head_name!r} ({type(head).__name__}) has no feature-vector classifier "
                             f"to re-fit: classify, region and rcnn heads have")
        extra = {"backbone": model.backbone} if head.uses_backbone else {}
        proposals, _ = head.proposals(features, batch)
        rois, labels = [], []
        for props, t in zip(proposals, batch.targets):
            gt = t["boxes"].to(props.device)
            neg = props
            if len(gt):
                neg = props[box_iou(props, gt).max(dim=1).values < head.svm_neg_iou]
            pick = torch.randperm(len(neg), generator=gen)[:negatives_per_image].to(neg.device)
            rois.append(torch.cat([gt, neg[pick]]))
            labels.append(torch.cat([t["labels"].cpu(), torch.full((len(pick),), head.num_classes)]))
        xs.append(head.fc(head.region_features(features, batch, rois, **extra)).float().cpu())
        ys.append(torch.cat(labels))
    return torch.cat(xs).numpy(), torch.cat(ys).numpy()


def fit_softmax(layer: nn.Linear, x: np.ndarray, y: np.ndarray, c: float = 1.0, max_iter: int = 500) -> None:
    """Multinomial logistic regression (L2, inverse strength ``c``) of ``x`` onto ``y``, copied into
    ``layer`` (``out_features`` = the number of classes; a class absent from ``y`` keeps its row)."""
    from sklearn.linear_model import LogisticRegression
    clf = LogisticRegression(C=c, max_iter=max_iter).fit(x, y)
    _copy_rows(layer, clf, x, y)


def fit_svms(layer: nn.Linear, x: np.ndarray, y: np.ndarray, weight_decay: float = 1e-4) -> None:
    """One-vs-rest linear SVMs with the hinge loss, one per class row of ``layer`` (``[K, D]``;
    label K, background, is a negative of every class), copied into ``layer``. ``weight_decay``
    is the training loss's L2 on the weights beside the mean hinge, so ``C = 1 / (weight_decay N)``."""
    from sklearn.svm import LinearSVC
    k = layer.out_features
    weight, bias = layer.weight.detach().clone(), layer.bias.detach().clone()
    for c in range(k):
        target = (y == c).astype(np.int64)
        if target.min() == target.max():
            continue  # a class with no vectors (or nothing else): its SVM stays
        svm = LinearSVC(C=1.0 / (max(weight_decay, 1e-12) * len(y)), loss="hinge", max_iter=20000)
        svm.fit(x, target)
        weight[c] = torch.as_tensor(svm.coef_[0], dtype=weight.dtype)
        bias[c] = float(svm.intercept_[0])
    layer.weight.data.copy_(weight)
    layer.bias.data.copy_(bias)


def _copy_rows(layer: nn.Linear, clf, x: np.ndarray, y: np.ndarray) -> None:
    weight, bias = layer.weight.detach().clone(), layer.bias.detach().clone()
    coef, intercept = clf.coef_, clf.intercept_
    if len(clf.classes_) == 2:  # scikit-learn's binary form: one row for the second class
        coef = np.concatenate([-coef / 2, coef / 2])
        intercept = np.concatenate([-intercept / 2, intercept / 2])
    for row, c in enumerate(clf.classes_):
        weight[int(c)] = torch.as_tensor(coef[row], dtype=weight.dtype)
        bias[int(c)] = float(intercept[row])
    layer.weight.data.copy_(weight)
    layer.bias.data.copy_(bias)


def refit(model: nn.Module, head_name: str, x: np.ndarray, y: np.ndarray) -> str:
    """Fit the head's last layer again on ``(x, y)``; which layer, in words."""
    head = model.heads[head_name]
    if hasattr(head, "embed"):
        fit_softmax(head.classifier[-1], x, y)
        return "the image classifier's last linear layer (softmax)"
    if getattr(head, "svm", None) is not None:
        fit_svms(head.svm, x, y, head.svm_weight_decay)
        return "the per-class SVMs"
    fit_softmax(head.predictor.cls_score, x, y)
    return "the region classifier's softmax layer (background included)"


def class_histogram(y: np.ndarray, names: list[str], background: Optional[int] = None) -> dict[str, int]:
    """``{class name: vectors}`` (the background as "background")."""
    out = {}
    for c, n in zip(*np.unique(y, return_counts=True)):
        out["background" if c == background else names[int(c)]] = int(n)
    return out
