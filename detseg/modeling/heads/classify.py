"""Image classification (``type: classify``): one label per image, from the backbone's last map.

The classifier is either global average pooling and one linear layer (ResNet, GoogLeNet,
DenseNet), or the architecture's own "flatten + fully connected" classifier (LeNet-5's F6,
AlexNet's and VGG's two 4096-unit layers with dropout): the feature map is average-pooled to a
fixed ``pool_size`` grid (torchvision's ``AdaptiveAvgPool2d``), flattened, and passed through
``hidden`` linear layers. ``classifier: auto`` picks the one the architecture was published with.

GoogLeNet's auxiliary classifiers (Szegedy et al. 2015) read the maps after inception 4a and 4d
(``aux_features: [c4a, c4d]``, which the backbone must return); in training their losses join
the main one weighted by ``aux_weight`` (0.3 in the paper), at test they are not run.

``forward_test`` returns class probabilities ``Tensor[B, K]`` (the ``CLASSES`` output kind).
``convolutionalize`` (``detseg.modeling.convolutionalize``) turns the classifier into
convolutions with the same weights, for the sliding window and FCN (OverFeat, FCN).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from ...config import ConfigError, ranged
from ...structures import Batch
from ..backbones import ShapeSpec, coarsest
from ..class_layout import PER_CLASS
from ..losses import ClassWeightedLoss, LossConfig
from .base import CLASSES, Head

# The classifier each architecture was published with: (kind, hidden widths, pool size, dropout,
# activation). VGG's pool size 7 is torchvision's (its 7 x 7 grid at 224 px); AlexNet's 6 x 6.
_PUBLISHED = {
    "lenet5": ("fc", [84], 1, 0.0, "tanh"),
    "alexnet": ("fc", [4096, 4096], 6, 0.5, "relu"),
    "vgg": ("fc", [4096, 4096], 7, 0.5, "relu"),
    "googlenet": ("gap", [], 1, 0.4, "relu"),
}
_GAP = ("gap", [], 1, 0.0, "relu")  # ResNet, DenseNet
ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}  # the published classifiers' activations


def published_classifier(arch: Optional[str]) -> tuple[str, list[int], int, float, str]:
    """(kind, hidden, pool_size, dropout, activation) of architecture ``arch``'s own classifier."""
    if arch is None:
        return _GAP
    return _PUBLISHED.get("vgg" if arch.startswith("vgg") else arch, _GAP)


@dataclass
class ClassifyHeadConfig:
    """Image classification (``type: classify``); None: the architecture's own choice."""

    type: Literal["classify"] = "classify"
    feature: Optional[str] = None  # default: the coarsest map
    # gap: global average pooling + one linear layer; fc: pool to pool_size, flatten, hidden layers
    classifier: Literal["auto", "gap", "fc"] = "auto"
    hidden: Optional[list[int]] = None  # fc: hidden widths (auto: the architecture's)
    pool_size: Optional[int] = ranged(None, ge=1)  # fc: the grid the map is average-pooled to
    dropout: Optional[float] = ranged(None, ge=0, le=1)  # before each linear layer after the first
    label_smoothing: float = ranged(0.0, ge=0, le=1)
    # GoogLeNet's auxiliary classifiers: feature maps they read (the backbone must return them)
    aux_features: list[str] = field(default_factory=list)
    aux_weight: float = ranged(0.3, ge=0)
    # cross-entropy or focal, optionally class-weighted by the training images per class
    loss: LossConfig = field(default_factory=LossConfig)


def build_classifier(channels: int, num_classes: int, kind: str, hidden: Sequence[int], pool_size: int,
                     dropout: float, activation: str = "relu") -> nn.Sequential:
    """``[B, C, h, w]`` → logits ``[B, K]``: pool (``pool_size`` grid, 1 for ``gap``), flatten,
    then for each hidden width Linear, activation, Dropout, and a last Linear to K."""
    grid = 1 if kind == "gap" else pool_size
    layers: list[nn.Module] = [nn.AdaptiveAvgPool2d(grid), nn.Flatten()]
    width = channels * grid * grid
    act = ACTIVATIONS[activation]
    for h in ([] if kind == "gap" else hidden):
        layers += [nn.Linear(width, h), act(inplace=True) if act is nn.ReLU else act()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = h
    if kind == "gap" and dropout > 0:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


class ClassifyHead(ClassWeightedLoss, Head):
    """K-way image classifier on one backbone map.

    Args (keyword-only):
        in_shapes: ``backbone.output_shape()``; num_classes: K.
        arch: the backbone's architecture name (``classifier="auto"`` follows its design).
        feature: the map classified (default: the coarsest).
        classifier, hidden, pool_size, dropout: see ``ClassifyHeadConfig`` (None: the
            architecture's own).
        label_smoothing: of the cross-entropy.
        aux_features, aux_weight: GoogLeNet's auxiliary classifiers (torchvision's
            ``InceptionAux``: 4 x 4 average pool, 1x1 conv to 128, 1024 units, dropout 0.7).

    ``forward_train`` → ``{"loss_cls", "loss_aux<i>" (weighted)}``; ``forward_test`` →
    probabilities ``Tensor[B, K]``. Images are read whole: the batch's zero padding is part of
    the map (classification images all share one size, a multiple of 32, so there is none).
    """

    output = CLASSES
    config_class = ClassifyHeadConfig
    built_arguments = ("in_shapes", "num_classes", "arch")

    @classmethod
    def from_config(cls, settings: ClassifyHeadConfig, backbone: nn.Module, num_classes: int) -> "ClassifyHead":
        shapes = backbone.output_shape()
        for name in [settings.feature, *settings.aux_features]:
            if name is not None and name not in shapes:
                raise ConfigError(f"model.heads: the classify head reads feature {name!r}, which the "
                                  f"backbone does not return ({', '.join(shapes)}); add it to "
                                  f"model.backbone.out_features")
        return cls(in_shapes=shapes, num_classes=num_classes, arch=architecture(backbone),
                   **cls.settings_kwargs(settings))

    def __init__(self, *, in_shapes: dict[str, ShapeSpec], num_classes: int, arch: Optional[str] = None,
                 feature: Optional[str] = None, classifier: str = "auto", hidden: Optional[Sequence[int]] = None,
                 pool_size: Optional[int] = None, dropout: Optional[float] = None,
                 label_smoothing: float = 0.0, aux_features: Sequence[str] = (), aux_weight: float = 0.3,
                 loss: Optional[LossConfig] = None):
        super().__init__()
        self.init_loss(loss, num_classes)
        if label_smoothing > 0 and self.loss_settings.kind != "ce":
            raise ValueError(f"classify head: label_smoothing applies to the cross-entropy loss, not to "
                             f"{self.loss_settings.kind}")
        kind, own_hidden, own_pool, own_dropout, activation = published_classifier(arch)
        if classifier != "auto" and classifier != kind:
            # another kind than the architecture's: its hidden widths and pool size do not apply
            kind, own_hidden, own_pool, activation = classifier, [], 1, "relu"
        self.feature = feature or coarsest(in_shapes)
        self.kind = kind
        self.num_classes = num_classes
        self.pool_size = 1 if kind == "gap" else (own_pool if pool_size is None else pool_size)
        self.classifier = build_classifier(
            in_shapes[self.feature].channels, num_classes, kind,
            own_hidden if hidden is None else hidden, self.pool_size,
            own_dropout if dropout is None else dropout, activation)
        from torchvision.models.googlenet import InceptionAux
        self.aux_features = list(aux_features)
        self.aux = nn.ModuleList(InceptionAux(in_shapes[f].channels, num_classes) for f in self.aux_features)
        self.aux_weight = aux_weight
        self.label_smoothing = label_smoothing

    def class_axes(self) -> dict:
        """The last linear layer of the classifier (and of each auxiliary one): K rows, no
        background."""
        last = len(self.classifier) - 1
        out = {f"classifier.{last}.{p}": {0: PER_CLASS} for p in ("weight", "bias")}
        for i in range(len(self.aux)):
            out.update({f"aux.{i}.fc2.{p}": {0: PER_CLASS} for p in ("weight", "bias")})
        return out

    def logits(self, features: dict[str, Tensor]) -> Tensor:
        """``[B, K]`` class logits of the main classifier."""
        return self.classifier(features[self.feature])

    def embed(self, features: dict[str, Tensor]) -> Tensor:
        """``[B, D]``: what the main classifier's last linear layer reads (its embedding)."""
        return self.classifier[:-1](features[self.feature]).flatten(1)

    def forward_train(self, features, batch, **kwargs) -> dict[str, Tensor]:
        batch = Batch.of(batch)
        if batch.labels is None:
            raise ValueError("the classify head trains on image labels: batch.labels is missing "
                             "(a classification dataset's samples carry 'label')")
        labels = batch.labels.to(features[self.feature].device)
        ls = self.label_smoothing
        losses = {"loss_cls": self.classification_loss(self.logits(features).float(), labels, label_smoothing=ls)}
        for i, (name, aux) in enumerate(zip(self.aux_features, self.aux), 1):
            loss = self.classification_loss(aux(features[name]).float(), labels, label_smoothing=ls)
            losses[f"loss_aux{i}"] = self.aux_weight * loss
        return losses

    def forward_test(self, features, batch, **kwargs) -> Tensor:
        """Class probabilities ``Tensor[B, K]`` (the auxiliary classifiers are not run)."""
        return F.softmax(self.logits(features).float(), dim=1)


def architecture(backbone: nn.Module) -> Optional[str]:
    """The architecture name ``build_backbone`` gave ``backbone`` (or its FPN's body), if any."""
    body = getattr(backbone, "body", backbone)
    return getattr(body, "arch", None)
