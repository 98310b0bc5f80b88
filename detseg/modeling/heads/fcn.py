"""FCN semantic segmentation head (Long, Shelhamer, Darrell 2015): 32s, 16s and 8s.

A 1x1 score layer on the coarsest feature, learnable ``ConvTranspose2d`` upsampling initialised to
bilinear interpolation, 1x1 score layers on the stride-16 and stride-8 skips (zero-initialised, as
in the paper, so training starts from the coarser net's output), and crops so the output matches
the input size for any input size.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ...config import ranged
from ...structures import Batch, SEMANTIC_IGNORE as IGNORE
from ..backbones import ShapeSpec, coarsest
from ..class_layout import BG_FIRST
from ..losses import ClassWeightedLoss, LossConfig
from .base import SEMANTIC, Head
from .classify import ACTIVATIONS, architecture, published_classifier


def bilinear_kernel(channels: int, factor: int) -> torch.Tensor:
    """``ConvTranspose2d`` weight ``[C, C, 2f, 2f]`` that upsamples each channel bilinearly by ``f``."""
    size = 2 * factor
    center = factor - 0.5
    og = torch.arange(size, dtype=torch.float64)
    filt1d = 1 - (og - center).abs() / factor
    w = torch.zeros(channels, channels, size, size, dtype=torch.float64)
    w[range(channels), range(channels)] = filt1d[:, None] * filt1d[None, :]
    return w.float()


@dataclass
class FCNHeadConfig:
    """FCN semantic segmentation (``type: fcn``)."""

    type: Literal["fcn"] = "fcn"
    variant: Literal["32s", "16s", "8s"] = "8s"
    hidden: int = ranged(256, ge=1)  # channels of the 3x3 conv on the top feature (fc6 / fc7's role)
    dropout: float = ranged(0.1, ge=0, le=1)  # after that conv
    # "bn": BatchNorm after the 3x3 conv on the top feature, as torchvision's FCNHead has;
    # "none": the paper's head
    head_norm: Literal["none", "bn"] = "none"
    # "conv": the 3x3 conv of ``hidden`` channels above on the top map (torchvision's FCNHead);
    # "classifier": the backbone architecture's own classifier as convolutions, as the FCN paper
    # does (VGG's two 4096-unit layers as a 7x7 and a 1x1 conv, fc6 / fc7; ResNet's one linear
    # layer as the 1x1 score layer itself), so that ``model.init_from`` a classification
    # checkpoint of that backbone converts its fully connected weights instead of dropping them.
    # hidden, dropout and head_norm are then the classifier's (the architecture's published ones).
    top: Literal["conv", "classifier"] = "conv"
    # training only: weight of an auxiliary classifier's loss on the stride-16 feature
    # (torchvision's ``aux_loss``, PSPNet's deep supervision); 0 = no auxiliary classifier
    aux_weight: float = ranged(0.0, ge=0)
    # share of labelled pixels in the batch that the loss averages over, the hardest (highest
    # loss) first: DeepLab's hard pixel mining (detectron2's ``top_k_percent_pixels``); 1 = all
    # (from scratch on the shapes recipe 0.2 collapsed: mIoU 0.17 after 2000 iterations, vs 0.71)
    top_k_pixels: float = ranged(1.0, gt=0, le=1)
    # the pixels' loss: cross-entropy or focal, optionally class-weighted by pixel counts
    loss: LossConfig = field(default_factory=LossConfig)


class Upsample(nn.Module):
    """Learnable x``factor`` upsampling; at initialisation it equals
    ``F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)`` exactly.

    The input is edge-padded by one cell and the transposed convolution's output cropped, so the
    border behaves as bilinear interpolation's clamping rather than a fade to zero.
    """

    def __init__(self, channels: int, factor: int):
        super().__init__()
        self.factor = factor
        if factor > 1:
            self.deconv = nn.ConvTranspose2d(channels, channels, 2 * factor, stride=factor,
                                             padding=factor // 2, bias=False)
            with torch.no_grad():
                self.deconv.weight.copy_(bilinear_kernel(channels, factor))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: ``[B, C, h, w]`` → ``[B, C, h * f, w * f]``."""
        if self.factor == 1:
            return x
        h, w = x.shape[-2:]
        f = self.factor
        y = self.deconv(F.pad(x, (1, 1, 1, 1), mode="replicate"))
        # The padded cell on each side becomes f output pixels; drop them.
        return y[..., f:f + h * f, f:f + w * f]


def fit_to(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Crop (or, if smaller, edge-pad) ``x[..., :h, :w]`` to exactly ``h x w``."""
    x = x[..., :h, :w]
    ph, pw = h - x.shape[-2], w - x.shape[-1]
    if ph > 0 or pw > 0:
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    return x


class FCNHead(ClassWeightedLoss, Head):
    """FCN-32s / 16s / 8s on backbone features.

    Args (keyword-only):
        in_shapes: ``{name: ShapeSpec}`` from ``backbone.output_shape()``, coarsest last.
        num_classes: K object classes; the head predicts K + 1 maps (index 0 = background).
        variant: ``"32s"``, ``"16s"`` or ``"8s"``: how many finer skips are fused.
        hidden: channels of the 3x3 conv before the top score layer (FCN's fc6/fc7 role).
        head_norm: ``"bn"`` puts BatchNorm after that conv (as torchvision's ``FCNHead``);
            ``"none"`` is the paper's head.
        aux_weight: > 0 adds an auxiliary classifier on the stride-16 feature whose loss, times
            this weight, joins the main one in training (torchvision's ``aux_loss``); it is not
            used at inference.
        top_k_pixels: the loss averages the per-pixel cross entropy over only this share of the
            labelled pixels of the batch, the highest-loss ones (DeepLab's hard pixel mining);
            1.0 is the plain mean.
        loss: ``LossConfig``: cross-entropy or focal, class weights from the training pixels
            (background first) when ``class_weight`` is set.
        top: ``"conv"`` (``hidden``'s 3x3 conv) or ``"classifier"``: the layers of ``arch``'s
            published classifier as convolutions (``classifier_convs`` names them, first to the
            score layer), which ``init_from`` fills from a classification checkpoint.
        arch: the backbone's architecture name (``top="classifier"`` follows its classifier).

    Input: features dict; ``images_hw`` (H, W) of the padded input batch.
    Output: logits ``Tensor[B, K + 1, H, W]``.
    """

    output = SEMANTIC
    config_class = FCNHeadConfig
    count_kind = "pixels"
    built_arguments = ("in_shapes", "num_classes", "arch")

    @classmethod
    def from_config(cls, settings: FCNHeadConfig, backbone: nn.Module, num_classes: int) -> "FCNHead":
        return cls(in_shapes=backbone.output_shape(), num_classes=num_classes, arch=architecture(backbone),
                   **cls.settings_kwargs(settings))

    def __init__(self, *, in_shapes: dict[str, ShapeSpec], num_classes: int, variant: str = "8s",
                 hidden: int = 256, dropout: float = 0.1, head_norm: str = "none", aux_weight: float = 0.0,
                 top_k_pixels: float = 1.0, loss: LossConfig | None = None, top: str = "conv",
                 arch: str | None = None):
        super().__init__()
        if variant not in ("32s", "16s", "8s"):
            raise ValueError(f"FCN variant must be 32s, 16s or 8s, got {variant!r}")
        if head_norm not in ("none", "bn"):
            raise ValueError(f"FCN head_norm must be none or bn, got {head_norm!r}")
        if top not in ("conv", "classifier"):
            raise ValueError(f"FCN top must be conv or classifier, got {top!r}")
        if top == "classifier" and head_norm != "none":
            raise ValueError("FCN top: classifier takes the architecture's classifier, which has no "
                             "normalisation: leave head_norm at none")
        self.top_kind = top
        if aux_weight < 0:
            raise ValueError(f"FCN aux_weight must be >= 0, got {aux_weight}")
        if not 0 < top_k_pixels <= 1:
            raise ValueError(f"FCN top_k_pixels must be in (0, 1], got {top_k_pixels}")
        self.top_k_pixels = float(top_k_pixels)
        self.init_loss(loss, num_classes + 1)
        if self.top_k_pixels < 1 and self.loss_settings.kind == "focal":
            raise ValueError("FCN: top_k_pixels and the focal loss both weight the hard pixels; choose one")
        names = sorted(in_shapes, key=lambda n: in_shapes[n].stride)  # stable: backbone order among ties
        # the deepest of the coarsest maps (LeNet's C5, not S4 beside it at the same stride)
        self.top = coarsest(in_shapes)
        # Skips: the stride-16 and stride-8 features (excluding the top map itself).
        n_skips = {"32s": 0, "16s": 1, "8s": 2}[variant]
        by_stride = {}
        for n in (n for n in names if n != self.top):
            by_stride.setdefault(in_shapes[n].stride, n)
        self.skips = [by_stride[s] for s in (16, 8) if s in by_stride][:n_skips]
        if len(self.skips) < n_skips:
            raise ValueError(f"FCN-{variant} needs stride-16 and stride-8 features; backbone gives "
                             f"{ {n: s.stride for n, s in in_shapes.items()} }")
        self.variant = variant
        k = num_classes + 1
        self.num_outputs = k
        top = in_shapes[self.top]
        self.top_stride = top.stride
        if self.top_kind == "classifier":
            self.fc, width = self._classifier_convs(top.channels, arch)
        else:
            # The norm slot is an Identity for the paper's head, so the conv keeps the key fc.0 either way.
            norm = nn.BatchNorm2d(hidden) if head_norm == "bn" else nn.Identity()
            self.fc = nn.Sequential(nn.Conv2d(top.channels, hidden, 3, padding=1, bias=head_norm == "none"),
                                    norm, nn.ReLU(inplace=True), nn.Dropout2d(dropout))
            width = hidden
        self.score_top = nn.Conv2d(width, k, 1)
        self.score_skips = nn.ModuleList()
        self.ups = nn.ModuleList()
        stride = top.stride
        for name in self.skips:
            s = in_shapes[name]
            score = nn.Conv2d(s.channels, k, 1)
            nn.init.zeros_(score.weight)
            nn.init.zeros_(score.bias)
            self.score_skips.append(score)
            self.ups.append(Upsample(k, stride // s.stride))
            stride = s.stride
        self.final_up = Upsample(k, stride)
        self.out_stride = stride
        self.aux_weight = float(aux_weight)
        self.aux_feature = None
        if aux_weight > 0:
            if 16 not in by_stride:
                raise ValueError("FCN aux_weight needs a stride-16 feature; backbone gives "
                                 f"{ {n: s.stride for n, s in in_shapes.items()} }")
            self.aux_feature = by_stride[16]
            c = in_shapes[self.aux_feature].channels
            mid = max(c // 4, 32)
            self.aux = nn.Sequential(nn.Conv2d(c, mid, 3, padding=1, bias=False), nn.BatchNorm2d(mid),
                                     nn.ReLU(inplace=True), nn.Dropout2d(dropout), nn.Conv2d(mid, k, 1))

    @staticmethod
    def _classifier_convs(channels: int, arch: str | None) -> tuple[nn.Sequential, int]:
        """``arch``'s published classifier (``published_classifier``) without its last layer, as
        convolutions at stride 1 with "same" padding: its first fully connected layer as a
        ``pool x pool`` conv, the next ones 1x1, each followed by its activation and dropout.
        (ResNet's, GoogLeNet's, DenseNet's is a single layer: nothing before the score layer.)
        Returns (the layers, the channels they end with)."""
        kind, hidden, pool, dropout, activation = published_classifier(arch)
        act = ACTIVATIONS[activation]
        layers: list[nn.Module] = []
        for i, width in enumerate(hidden if kind == "fc" else []):
            size = pool if i == 0 else 1
            layers += [nn.Conv2d(channels, width, size, padding="same"), act()]
            if dropout > 0:
                layers.append(nn.Dropout2d(dropout))
            channels = width
        return nn.Sequential(*layers), channels

    def classifier_convs(self) -> list[str]:
        """With ``top="classifier"``: the convolutions standing for the classifier's linear
        layers, in order (the last is ``score_top``); [] otherwise."""
        if self.top_kind != "classifier":
            return []
        convs = [f"fc.{i}" for i, m in enumerate(self.fc) if isinstance(m, nn.Conv2d)]
        return [*convs, "score_top"]

    def class_axes(self) -> dict:
        """Class-dependent tensors (``detseg.modeling.class_layout``): the score layers' output
        maps and the deconvolutions, whose input and output channels are both the K + 1 maps."""
        axes = {}
        scores = ["score_top", *(f"score_skips.{i}" for i in range(len(self.score_skips)))]
        if self.aux_feature is not None:
            scores.append(f"aux.{len(self.aux) - 1}")
        for name in scores:
            axes.update({f"{name}.weight": {0: BG_FIRST}, f"{name}.bias": {0: BG_FIRST}})
        for name in [*(f"ups.{i}" for i in range(len(self.ups))), "final_up"]:
            if self.get_submodule(name).factor > 1:
                axes[f"{name}.deconv.weight"] = {0: BG_FIRST, 1: BG_FIRST}
        return axes

    def score_stages(self, features: dict[str, torch.Tensor]) -> list[tuple[int, torch.Tensor]]:
        """The class scores after each stage, coarse to fine: ``[(stride, [B, K + 1, h, w])]``,
        the top map's (FCN-32s) first, then each skip's fusion (16s, 8s)."""
        x = self.score_top(self.fc(features[self.top]))
        stride = self.top_stride
        stages = [(stride, x)]
        for name, score, up in zip(self.skips, self.score_skips, self.ups):
            skip = score(features[name])
            x = fit_to(up(x), *skip.shape[-2:]) + skip
            stride //= up.factor
            stages.append((stride, x))
        return stages

    def forward(self, features: dict[str, torch.Tensor], images_hw: tuple[int, int]) -> torch.Tensor:
        return fit_to(self.final_up(self.score_stages(features)[-1][1]), *images_hw)

    def forward_train(self, features: dict, batch) -> dict[str, torch.Tensor]:
        """Losses against ``batch.semantic`` (``[B, H, W]``, 255 = ignore)."""
        batch = Batch.of(batch)  # a plain dict from one's own pipeline, read as a Batch
        hw = tuple(batch.semantic.shape[-2:])
        target = batch.semantic.to(features[self.top].device)
        losses = {"loss_fcn": self.loss(self(features, hw), target)}
        if self.aux_feature is not None:
            aux = F.interpolate(self.aux(features[self.aux_feature]), scale_factor=16, mode="bilinear",
                                align_corners=False)
            losses["loss_fcn_aux"] = self.aux_weight * self.loss(fit_to(aux, *hw), target)
        return losses

    def forward_test(self, features: dict, batch) -> torch.Tensor:
        """Logits ``[B, K + 1, H, W]`` at the padded input size."""
        batch = Batch.of(batch)  # a plain dict from one's own pipeline, read as a Batch
        return self(features, tuple(batch.images.shape[-2:]))

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-pixel loss (``loss_settings``: cross-entropy or focal, class-weighted or not) of
        ``logits`` ``[B, K + 1, H, W]`` against ``target`` uint8/int ``[B, H, W]`` (255 ignored),
        averaged over all labelled pixels, or over the hardest ``top_k_pixels`` share of them."""
        if self.top_k_pixels >= 1.0:
            return self.classification_loss(logits, target.long(), ignore_index=IGNORE)
        weight = self.applied_class_weight
        weight = weight.to(logits.dtype) if weight is not None else None
        per_pixel = F.cross_entropy(logits, target.long(), weight=weight, ignore_index=IGNORE, reduction="none")
        # Ignored pixels have loss 0, so they sort last; k counts labelled pixels only.
        labelled = int((target != IGNORE).sum())
        k = max(1, int(round(labelled * self.top_k_pixels)))
        return per_pixel.flatten().topk(k, sorted=False).values.mean()


def _source_index(out_size: int, in_size: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bilinear (align_corners=False) sources of each output position along one axis, the way
    ``F.interpolate`` computes them: (first index, second index, weight of the second)."""
    scale = torch.tensor(in_size / out_size, dtype=torch.float32)
    src = ((torch.arange(out_size, dtype=torch.float32) + 0.5) * scale - 0.5).clamp(min=0)
    i0 = src.floor().long().clamp(max=in_size - 1)
    i1 = (i0 + 1).clamp(max=in_size - 1)
    return i0.to(device), i1.to(device), (src - i0).to(device)


def labels_at(logits: torch.Tensor, size: tuple[int, int], budget_bytes: int = 256 << 20) -> torch.Tensor:
    """The argmax of ``logits`` upsampled bilinearly to ``size``, in bounded memory.

    Args:
        logits: ``Tensor[C, h, w]`` class scores of one image.
        size: (H, W) of the result.
        budget_bytes: when the whole upsampled ``[C, H, W]`` float32 fits in this, one
            ``F.interpolate``; else bands of output rows, each interpolated the same way (an
            8000 x 8000 photo with 81 COCO classes would otherwise need 20 GB).

    Returns:
        ``Tensor[H, W]`` uint8 labels. Bands and the one-shot path agree except where two
        classes tie to float rounding.
    """
    c, h, w = logits.shape
    big_h, big_w = size
    logits = logits.float()
    if c * big_h * big_w * 4 <= budget_bytes:
        up = F.interpolate(logits[None], size=size, mode="bilinear", align_corners=False)[0]
        return up.argmax(0).to(torch.uint8)
    x0, x1, lx = _source_index(big_w, w, logits.device)
    y0, y1, ly = _source_index(big_h, h, logits.device)
    # Width first for every input row (C x h x W), then each band of output rows from it.
    wide = logits[:, :, x0] * (1 - lx) + logits[:, :, x1] * lx
    rows = max(1, budget_bytes // max(1, c * big_w * 4))
    out = torch.empty(big_h, big_w, dtype=torch.uint8, device=logits.device)
    for start in range(0, big_h, rows):
        sl = slice(start, start + rows)
        band = wide[:, y0[sl]] * (1 - ly[sl, None]) + wide[:, y1[sl]] * ly[sl, None]
        out[sl] = band.argmax(0).to(torch.uint8)
    return out
