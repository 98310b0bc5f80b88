"""Sliding-window detection (OverFeat, Sermanet et al. 2014), computed convolutionally.

A window of ``kh x kw`` feature cells is classified by a ``Conv2d`` with that kernel (after a
shared 1x1 channel reduction) followed by a 1x1 conv: applied to the whole feature map it scores
every window position at once, which is exactly OverFeat's point. Several window shapes
(scales x aspect ratios) each get a classifier; each predicts K + 1 class scores and
class-specific box deltas.

Scale sharing (``scales``): OverFeat runs one classifier over an image pyramid, so a window
classifier learns from objects of every size. Here a window of ``scale`` times a base shape
(``kh x kw`` cells) is classified by the base classifier on the feature map box-filtered by
``scale`` (``avg_pool2d``, stride 1) with its taps ``scale`` cells apart (``dilation=scale``):
the same weights see each window as a ``kh x kw`` grid of ``scale x scale`` cell averages, i.e.
the window as it would look on a feature map ``scale`` times coarser. With ``scales=(1,)`` every
window shape has its own classifier.

Why the image is padded by a context margin: a window's score depends on every pixel in its
receptive field, which reaches ``margin`` pixels beyond the window. The backbone therefore runs on
the image padded by ``margin`` (the mean pixel), and only windows lying inside the image are
scored. Then the ``naive`` mode, which crops each window *with its margin* from that padded image
and runs backbone and classifier on the crop alone, sees the very same pixels through the very
same arithmetic and gives the same scores (up to float rounding). Without the margin a crop's
border would see zero padding where the full image has content. The margin costs: on ResNet-18's
stride-8 map it is 56 px a side, so a 144-px image becomes 256 px (3.2x the pixels). A smaller
``context_margin`` (config) trades the exact equality for speed: border windows then see the
network's own zero padding, as in any detector that does not pad.

Training computes each classifier densely only to label and mine windows (no gradient), then
recomputes the sampled windows alone (``classify_at``: a gather of each window's taps and two
matrix products) for the loss. A window's gradient is nonzero only where it was sampled, so the
dense convolutions' backward (a full ``kh x kw`` convolution per window shape over the whole map)
did work for about 256 of several thousand windows per image; the recompute gives the same
outputs and gradients up to rounding, at a fraction of the cost.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...config import ranged
from ...structures import Batch, Instances
from ..backbones import ShapeSpec, coarsest, context_margin, run_until
from ..box_coder import BoxCoder
from ..class_layout import BOX_DELTAS, SCORES_BG_LAST
from ..losses import ClassWeightedLoss, LossConfig
from ..proposals.windows import window_sizes
from ..sampling import BACKGROUND, match, sample, sampled_targets
from .base import Head
from .box_predictor import classification_and_box_losses, deltas_to_boxes, detect


@dataclass
class SlidingWindowHeadConfig:
    """A window classifier slid over the image convolutionally, OverFeat-style (``type: sliding_window``)."""

    type: Literal["sliding_window"] = "sliding_window"
    feature: Optional[str] = None  # default: the stride-16 map
    window_sizes: list[float] = field(default_factory=lambda: [32.0, 64.0, 128.0])
    aspect_ratios: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    scales: list[int] = field(default_factory=lambda: [1])  # multiples sharing a base classifier
    reduce: int = 64
    hidden: int = 256
    mode: Literal["conv", "naive"] = "conv"
    fg_iou: float = 0.5
    bg_iou: float = 0.4
    batch_size_per_image: int = 256
    fg_fraction: float = 0.25
    hard_negative_fraction: float = 0.0  # share of background windows mined as the hardest
    # Pixels of image context around the image that the backbone sees (mean-pixel padding): None =
    # the feature's receptive field, so that "naive" and "conv" give the same scores; less is
    # cheaper (the padded image is smaller) and border windows then see the network's own padding.
    context_margin: Optional[int] = ranged(None, ge=0)
    score_thresh: float = 0.05
    nms_thresh: float = 0.5
    detections_per_image: int = 100
    naive_batch_size: int = ranged(64, ge=1)  # mode naive: window crops per backbone call
    # the window classifier's loss: cross-entropy, focal or seesaw, optionally class-weighted by
    # the training instances per class (background weighted 1)
    loss: LossConfig = field(default_factory=LossConfig)


def default_feature(in_shapes: dict[str, ShapeSpec]) -> str:
    """The stride-16 map if there is one (OverFeat's classifier stride), else the coarsest."""
    by_stride = {s.stride: n for n, s in in_shapes.items()}
    return by_stride.get(16, coarsest(in_shapes))


def window_cells(sizes: Sequence[float], aspect_ratios: Sequence[float],
                 stride: int) -> list[tuple[int, int]]:
    """Distinct (kh, kw) window shapes in feature cells for the given pixel sizes and ratios."""
    shapes = []
    for w, h in window_sizes(sizes, aspect_ratios):
        kh, kw = max(1, round(h / stride)), max(1, round(w / stride))
        if (kh, kw) not in shapes:
            shapes.append((kh, kw))
    return shapes


def scaled_windows(base: Sequence[tuple[int, int]],
                   scales: Sequence[int]) -> list[tuple[tuple[int, int], int, int]]:
    """Window shapes made of base shapes times integer scales, each shape once.

    Returns:
        ``[((kh, kw), base index, scale)]`` in cells; a shape reachable several ways keeps the
        smallest scale (the most classifier taps).
    """
    out, seen = [], set()
    for scale in sorted(set(int(x) for x in scales)):
        if scale < 1:
            raise ValueError(f"sliding window scales must be integers >= 1, got {scales}")
        for b, (bh, bw) in enumerate(base):
            cells = (bh * scale, bw * scale)
            if cells not in seen:
                seen.add(cells)
                out.append((cells, b, scale))
    return out


class SlidingWindowHead(ClassWeightedLoss, Head):
    """Window classifier at several scales and aspect ratios on one backbone feature map.

    Args (keyword-only):
        in_shapes: ``backbone.output_shape()``.
        num_classes: K.
        margin: context margin in pixels, rounded up to the feature stride: ``context_margin``
            of the backbone for the exact naive / convolutional equivalence (``from_config``'s
            default), less for a cheaper pass (the convolutional mode then differs from the
            naive one near each window's edge of the margin).
        feature: which feature map (default: the stride-16 one if present, else the coarsest).
        window_sizes, aspect_ratios: window shapes, in pixels and h / w (the base shapes when
            ``scales`` has more than one entry).
        scales: integer multiples of every base shape to slide as well, sharing the base shape's
            classifier (see the module docstring); ``(1,)``: one classifier per window shape.
        reduce: channels of the shared 1x1 reduction in front of every window classifier
            (the big ``kh x kw`` kernels then stay cheap).
        hidden: channels of each window classifier's ``kh x kw`` layer.
        mode: ``"conv"`` (default) or ``"naive"`` (crop every window; for comparison).
        fg_iou, bg_iou, batch_size_per_image, fg_fraction: training window labels and sampling.
        hard_negative_fraction: share of each image's background windows taken as the ones the
            classifier currently scores most like an object (bootstrapping, as sliding-window
            detectors were trained); the rest are drawn at random. 0: all at random.
        loss: the window classifier's ``LossConfig`` (ce, focal or seesaw; class weights from
            the training instances per class).

    Uses the backbone itself: ``forward_*(features, batch, backbone=...)`` with
    ``batch.pixels`` the normalised images; ``Model`` passes both.
    """

    uses_backbone = True
    needs_features = False
    config_class = SlidingWindowHeadConfig
    built_arguments = ("in_shapes", "num_classes", "margin")
    consumed_settings = ("context_margin",)
    count_kind = "instances"
    background_last = True

    @classmethod
    def from_config(cls, settings: SlidingWindowHeadConfig, backbone: nn.Module,
                    num_classes: int) -> "SlidingWindowHead":
        shapes = backbone.output_shape()
        feature = settings.feature or default_feature(shapes)
        margin = settings.context_margin
        if margin is None:
            margin = context_margin(backbone, feature, shapes[feature].stride)
        return cls(in_shapes=shapes, num_classes=num_classes, margin=margin,
                   **{**cls.settings_kwargs(settings), "feature": feature})

    def __init__(self, *, in_shapes: dict[str, ShapeSpec], num_classes: int, margin: int,
                 feature: Optional[str] = None, window_sizes: Sequence[float] = (32, 64, 128),
                 aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0), scales: Sequence[int] = (1,),
                 reduce: int = 64, hidden: int = 256,
                 mode: str = "conv", fg_iou: float = 0.5, bg_iou: float = 0.4,
                 batch_size_per_image: int = 256, fg_fraction: float = 0.25,
                 hard_negative_fraction: float = 0.0, score_thresh: float = 0.05,
                 nms_thresh: float = 0.5, detections_per_image: int = 100, naive_batch_size: int = 64,
                 loss: Optional[LossConfig] = None):
        super().__init__()
        self.init_loss(loss, num_classes + 1)
        feature = feature or default_feature(in_shapes)
        if mode not in ("conv", "naive"):
            raise ValueError(f"sliding window mode must be 'conv' or 'naive', got {mode!r}")
        if margin < 0:
            raise ValueError(f"sliding window context margin must be >= 0 pixels, got {margin}")
        spec = in_shapes[feature]
        self.feature, self.stride, self.mode = feature, spec.stride, mode
        self.margin = int(math.ceil(margin / spec.stride) * spec.stride)
        self.num_classes = num_classes
        base = window_cells(window_sizes, aspect_ratios, spec.stride)
        windows = scaled_windows(base, scales)
        self.shapes = [cells for cells, _, _ in windows]  # (kh, kw) cells of every window shape
        self.shape_classifier = [(b, scale) for _, b, scale in windows]
        self.num_outputs = (num_classes + 1) + 4 * num_classes  # K + 1 logits, then 4K deltas
        self.reduce = nn.Sequential(nn.Conv2d(spec.channels, reduce, 1), nn.ReLU(inplace=True))
        self.classifiers = nn.ModuleList(
            nn.Sequential(nn.Conv2d(reduce, hidden, (kh, kw)), nn.ReLU(inplace=True),
                          nn.Conv2d(hidden, self.num_outputs, 1)) for kh, kw in base)
        for clf in self.classifiers:
            nn.init.normal_(clf[2].weight, std=0.01)
            nn.init.zeros_(clf[2].bias)
        self.coder = BoxCoder()
        self.fg_iou, self.bg_iou = fg_iou, bg_iou
        self.batch_size_per_image, self.fg_fraction = batch_size_per_image, fg_fraction
        if not 0.0 <= hard_negative_fraction <= 1.0:
            raise ValueError(f"hard_negative_fraction must be in [0, 1], got {hard_negative_fraction}")
        self.hard_negative_fraction = hard_negative_fraction
        self.score_thresh, self.nms_thresh = score_thresh, nms_thresh
        self.detections_per_image, self.naive_batch_size = detections_per_image, naive_batch_size

    def class_axes(self) -> dict:
        """Class-dependent tensors (``detseg.modeling.class_layout``): each classifier's last
        layer outputs K + 1 logits (background last), then 4K class-specific deltas."""
        layout = SCORES_BG_LAST + BOX_DELTAS
        return {f"classifiers.{i}.2.{p}": {0: layout}
                for i in range(len(self.classifiers)) for p in ("weight", "bias")}

    # -- window scoring -----------------------------------------------------------------------
    def classify(self, fmap: Tensor, shape_index: int, pooled: Optional[dict] = None) -> Tensor:
        """Outputs ``[B, (K + 1) + 4K, Ho, Wo]`` of window shape ``shape_index`` slid over the
        reduced map ``fmap`` ``[B, reduce, H, W]``: cell (y, x) is the window whose top-left
        cell is (y, x). ``pooled``: ``{scale: map}`` cache of ``scaled_map`` for several shapes."""
        b, scale = self.shape_classifier[shape_index]
        clf = self.classifiers[b]
        if scale == 1:
            return clf(fmap)
        conv = clf[0]
        x = self.scaled_map(fmap, scale, {} if pooled is None else pooled)
        x = F.conv2d(x, conv.weight, conv.bias, dilation=scale)
        return clf[2](clf[1](x))

    @staticmethod
    def scaled_map(fmap: Tensor, scale: int, pooled: dict) -> Tensor:
        """``fmap`` box-filtered by ``scale`` (stride 1): ``[B, C, H - scale + 1, W - scale + 1]``;
        ``pooled`` keeps each scale's map so that shapes of one scale share it."""
        if scale == 1:
            return fmap
        if scale not in pooled:
            pooled[scale] = F.avg_pool2d(fmap, scale, stride=1)
        return pooled[scale]

    def classify_at(self, fmap: Tensor, image: Tensor, shape: Tensor, gy: Tensor, gx: Tensor) -> Tensor:
        """``classify``'s outputs at single windows, computed for those windows only.

        Args:
            fmap: ``[B, reduce, H, W]`` reduced map.
            image, shape, gy, gx: ``Tensor[N]`` int64: each window's batch index, window shape
                index and top-left cell (as ``windows`` gives them).
        Returns:
            ``Tensor[N, (K + 1) + 4K]``, row n equal (up to rounding) to
            ``classify(fmap, shape[n])[image[n], :, gy[n], gx[n]]``.
        """
        d = self.num_outputs
        pooled: dict = {}
        rows, parts = [], []
        for j in torch.unique(shape).tolist():
            idx = torch.nonzero(shape == j).flatten()
            b, scale = self.shape_classifier[j]
            clf = self.classifiers[b]
            w = clf[0].weight  # [hidden, C, kh, kw]
            kh, kw = w.shape[-2:]
            x = self.scaled_map(fmap, scale, pooled)
            # the classifier's taps: kh x kw cells of the scaled map, ``scale`` cells apart
            ys = gy[idx, None] + scale * torch.arange(kh, device=gy.device)  # [n, kh]
            xs = gx[idx, None] + scale * torch.arange(kw, device=gx.device)  # [n, kw]
            taps = x[image[idx, None, None], :, ys[:, :, None], xs[:, None, :]]  # [n, kh, kw, C]
            hidden = F.relu(F.linear(taps.reshape(len(idx), -1),
                                     w.permute(0, 2, 3, 1).reshape(w.shape[0], -1), clf[0].bias))
            parts.append(F.linear(hidden, clf[2].weight.flatten(1), clf[2].bias))
            rows.append(idx)
        if not parts:
            return fmap.new_zeros(0, d)
        order = torch.cat(rows)
        out = torch.cat(parts)
        return out[torch.argsort(order)]

    def padded_pixels(self, pixels: Tensor, image_sizes) -> Tensor:
        """Images with batch padding set to the mean pixel (0), then ``margin`` of it all round."""
        h_pad, w_pad = pixels.shape[-2:]
        ys = torch.arange(h_pad, device=pixels.device)[:, None]
        xs = torch.arange(w_pad, device=pixels.device)[None, :]
        valid = torch.stack([(ys < h) & (xs < w) for h, w in image_sizes])[:, None]
        m = self.margin
        return F.pad(pixels * valid, (m, m, m, m))

    def windows(self, image_size: tuple[int, int], shape: tuple[int, int]):
        """Positions of one window shape lying inside an (h, w) image: (ys, xs) cell indices of
        the classifier's output on the padded image, and the windows ``Tensor[N, 4]`` in image
        pixels."""
        h, w = image_size
        kh, kw = shape
        s, m = self.stride, self.margin // self.stride
        ys = torch.arange(m, m + max(0, h // s - kh + 1))
        xs = torch.arange(m, m + max(0, w // s - kw + 1))
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        gy, gx = gy.reshape(-1), gx.reshape(-1)
        x0, y0 = (gx - m) * s, (gy - m) * s
        boxes = torch.stack([x0, y0, x0 + kw * s, y0 + kh * s], dim=1).float()
        return gy, gx, boxes

    def windows_on_grid(self, image_size, shape: tuple[int, int], grid: tuple[int, int]):
        """``windows`` as a mask over the classifier's whole output grid ``(rows, cols)``: the
        same windows in the same (row-major) order, with no Python branch on the image's size,
        so that an exported graph serves every size (``windows`` builds its ranges from
        ``max(0, ...)`` of the size, which ``torch.export`` can only keep by fixing it)."""
        h, w = image_size
        kh, kw = shape
        s, m = self.stride, self.margin // self.stride
        ys = torch.arange(grid[0])[:, None]
        xs = torch.arange(grid[1])[None, :]
        inside = (ys >= m) & (ys < m + h // s - kh + 1) & (xs >= m) & (xs < m + w // s - kw + 1)
        # row-major, as windows' meshgrid; 1-D nonzero and gathers (the ONNX exporter takes
        # neither the 2-D nonzero's size bound nor a remainder by a symbolic width)
        cells = torch.nonzero(inside.reshape(-1)).flatten()
        # a finite bound on the count: the exporter sums the shapes' counts, and int64 overflows
        torch._check(cells.shape[0] <= 1 << 40)
        gy = ys.expand(grid).reshape(-1)[cells]
        gx = xs.expand(grid).reshape(-1)[cells]
        x0, y0 = (gx - m) * s, (gy - m) * s
        boxes = torch.stack([x0, y0, x0 + kw * s, y0 + kh * s], dim=1).float()
        return gy, gx, boxes

    def _score_exported(self, fmap: Tensor, image_sizes) -> list[tuple[Tensor, Tensor]]:
        """``score_windows`` of the convolutional mode as ``torch.export`` traces it: the map is
        zero-padded by a window's size at the bottom and right, so every shape's classifier has
        an output even on an image smaller than the window (such a shape then selects no cell;
        cells it does select never reach the padding)."""
        per_image: list[list] = [[] for _ in image_sizes]
        for j, shape in enumerate(self.shapes):
            out = self.classify(F.pad(fmap, (0, shape[1], 0, shape[0])), j)
            for i, hw in enumerate(image_sizes):
                gy, gx, boxes = self.windows_on_grid(hw, shape, tuple(out.shape[-2:]))
                per_image[i].append((boxes.to(out.device), out[i, :, gy, gx].t()))
        return [(torch.cat([b for b, _ in parts]), torch.cat([o for _, o in parts]))
                for parts in per_image]

    def reduced_map(self, batch: dict, backbone: nn.Module) -> Tensor:
        """``[B, reduce, H', W']``: the reduced feature map of the margin-padded batch."""
        padded = self.padded_pixels(batch.pixels, batch.image_sizes)
        return self.reduce(run_until(backbone, padded, self.feature))

    def score_windows(self, batch: dict, backbone: nn.Module) -> list[tuple[Tensor, Tensor]]:
        """Per image: (windows ``Tensor[N, 4]``, outputs ``Tensor[N, (K + 1) + 4K]``)."""
        if self.mode == "naive":
            padded = self.padded_pixels(batch.pixels, batch.image_sizes)
            return self._score_naive(padded, batch.image_sizes, backbone)
        fmap = self.reduced_map(batch, backbone)
        if self.exporting:
            return self._score_exported(fmap, batch.image_sizes)
        return [(boxes, out) for boxes, out, _ in self._score_dense(fmap, batch.image_sizes)]

    def _score_dense(self, fmap: Tensor, image_sizes) -> list[tuple[Tensor, Tensor, Tensor]]:
        """Every window of every shape, convolutionally. Per image: (windows ``Tensor[N, 4]``,
        outputs ``Tensor[N, D]``, where ``Tensor[N, 3]`` int64: shape index, gy, gx)."""
        per_image: list[list] = [[] for _ in image_sizes]
        pooled: dict = {}
        for j, shape in enumerate(self.shapes):
            where = [self.windows(hw, shape) for hw in image_sizes]
            # boxes.shape[0], not len(boxes): len() would fix an exported graph's window count
            if not any(boxes.shape[0] for _, _, boxes in where):
                continue  # larger than every image (its kernel may not even fit the map)
            out = self.classify(fmap, j, pooled)  # [B, D, Ho, Wo]
            for i, (gy, gx, boxes) in enumerate(where):
                cells = torch.stack([torch.full_like(gy, j), gy, gx], dim=1)
                per_image[i].append((boxes.to(out.device), out[i, :, gy, gx].t(), cells))
        d = self.num_outputs
        # an image smaller than every window
        none = (fmap.new_zeros(0, 4), fmap.new_zeros(0, d), torch.zeros(0, 3, dtype=torch.long))
        return [tuple(torch.cat(x) for x in zip(*parts)) if parts else none for parts in per_image]

    def _score_naive(self, padded: Tensor, image_sizes, backbone: nn.Module):
        """Crop every window with its context margin and classify the crop on its own."""
        results = []
        for i, hw in enumerate(image_sizes):
            parts = [(boxes.to(padded.device), self.naive_scores(padded[i], boxes, j, backbone))
                     for j, boxes in enumerate(self.windows(hw, shape)[2] for shape in self.shapes)]
            results.append((torch.cat([b for b, _ in parts]), torch.cat([o for _, o in parts])))
        return results

    def naive_scores(self, padded_image: Tensor, boxes: Tensor, shape_index: int,
                     backbone: nn.Module) -> Tensor:
        """Outputs ``Tensor[N, (K + 1) + 4K]`` for windows of shape ``self.shapes[shape_index]``,
        each cropped with its margin from one padded image ``Tensor[3, H + 2m, W + 2m]`` (see
        ``padded_pixels``) and classified alone; ``boxes`` ``Tensor[N, 4]`` in image pixels."""
        kh, kw = self.shapes[shape_index]
        s, m = self.stride, self.margin
        mc = m // s
        outs = []
        for chunk in boxes.split(self.naive_batch_size) if len(boxes) else ():
            # a window at image (x0, y0) starts at (x0 + m, y0 + m) in the padded image
            crops = torch.stack([padded_image[:, int(y0): int(y0) + kh * s + 2 * m,
                                              int(x0): int(x0) + kw * s + 2 * m]
                                 for x0, y0 in chunk[:, :2].tolist()])
            f = self.reduce(run_until(backbone, crops, self.feature))[:, :, mc:mc + kh, mc:mc + kw]
            outs.append(self.classify(f, shape_index)[:, :, 0, 0])
        d = self.num_outputs
        return torch.cat(outs) if outs else padded_image.new_zeros(0, d)

    # -- training and inference ---------------------------------------------------------------
    def mine_negatives(self, logits: Tensor, matched: Tensor, n: int) -> Tensor:
        """``n`` background windows (indices), ``hard_negative_fraction`` of them the hardest.

        Args:
            logits: ``Tensor[N, K + 1]`` class logits of every window (background last).
            matched: ``Tensor[N]`` from ``match``; background windows are ``BACKGROUND``.
        Hardness is how much more the classifier believes "some object" than "background":
        ``logsumexp(object logits) - background logit``.
        """
        neg = torch.nonzero(matched == BACKGROUND).flatten()
        n = min(n, neg.numel())
        k = self.num_classes
        lg = logits[neg].detach()
        hardness = torch.logsumexp(lg[:, :k], dim=1) - lg[:, k]
        hard = hardness.topk(int(n * self.hard_negative_fraction)).indices
        rest = torch.ones(neg.numel(), dtype=torch.bool, device=neg.device)
        rest[hard] = False
        others = neg[rest]
        pick = torch.randperm(others.numel(), device="cpu")[: n - hard.numel()].to(neg.device)
        return torch.cat([neg[hard], others[pick]])

    def forward_train(self, features, batch, *, backbone: nn.Module) -> dict[str, Tensor]:
        batch = Batch.of(batch)  # a plain dict from one's own pipeline, read as a Batch
        k = self.num_classes
        if self.mode == "naive":
            scored = [(boxes, out, None) for boxes, out in self.score_windows(batch, backbone)]
        else:
            fmap = self.reduced_map(batch, backbone)
            with torch.no_grad():  # labels and mining only; the sampled windows are recomputed
                scored = self._score_dense(fmap, batch.image_sizes)
        outs, picked, labels, targets, regress = [], [], [], [], []
        for i, ((boxes, out, cells), t) in enumerate(zip(scored, batch.targets)):
            gt = t["boxes"].to(boxes.device)
            matched, _ = match(boxes, gt, fg_iou=self.fg_iou, bg_iou=self.bg_iou,
                               ignore=t.get("ignore_boxes"))
            fg, bg = sample(matched, self.batch_size_per_image, self.fg_fraction)
            if self.hard_negative_fraction > 0:
                bg = self.mine_negatives(out[:, : k + 1], matched, bg.numel())
            sel, lab, tgt = sampled_targets(boxes, gt, t["labels"], matched, fg, bg, self.coder, k)
            if cells is None:
                outs.append(out[sel])
            else:
                where = cells[sel.cpu()]
                picked.append(torch.cat([torch.full_like(where[:, :1], i), where], dim=1))
            labels.append(lab)
            targets.append(tgt)
            regress.append(torch.arange(len(sel), device=out.device) < len(fg))
        if self.mode == "conv":
            image, shape, gy, gx = torch.cat(picked).to(fmap.device).unbind(1)
            out = self.classify_at(fmap, image, shape, gy, gx)
        else:
            out = torch.cat(outs)
        losses = classification_and_box_losses(out[:, : k + 1], out[:, k + 1:], torch.cat(labels),
                                               torch.cat(targets), torch.cat(regress),
                                               cls_loss=self.classification_loss)
        return {"loss_window_cls": losses["loss_cls"], "loss_window_box": losses["loss_box"]}

    def forward_test(self, features, batch, *, backbone: nn.Module) -> list[Instances]:
        batch = Batch.of(batch)  # a plain dict from one's own pipeline, read as a Batch
        k = self.num_classes
        results = []
        for (boxes, out), hw in zip(self.score_windows(batch, backbone), batch.image_sizes):
            scores = F.softmax(out[:, : k + 1], dim=1)[:, :k]
            pred = deltas_to_boxes(self.coder, out[:, k + 1:], boxes)
            results.append(detect(pred, scores, hw, logits=out[:, :k], score_thresh=self.score_thresh,
                                  nms_thresh=self.nms_thresh, max_detections=self.detections_per_image))
        return results
