"""Region Proposal Network (Ren et al. 2015): anchors at several sizes and aspect ratios on one or
more feature maps, objectness and box deltas from a shared 3x3 conv, top-k, NMS.

Anchor layout, ordering and the proposal filtering follow torchvision's Faster R-CNN, so that
its weights give the same proposals here.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import sigmoid_focal_loss

from ...ops.nms import batched_nms
from ...structures import Batch, clip_boxes, nonempty
from ..box_coder import BoxCoder
from ..sampling import match, sample


def cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float]) -> Tensor:
    """Anchors centred on (0, 0): ``Tensor[len(ratios) * len(sizes), 4]``, ratio-major, rounded."""
    scales = torch.as_tensor(sizes, dtype=torch.float32)
    ratios = torch.as_tensor(aspect_ratios, dtype=torch.float32)
    h_ratios = torch.sqrt(ratios)
    w_ratios = 1 / h_ratios
    ws = (w_ratios[:, None] * scales[None, :]).reshape(-1)
    hs = (h_ratios[:, None] * scales[None, :]).reshape(-1)
    return (torch.stack([-ws, -hs, ws, hs], dim=1) / 2).round()


def grid_anchors(base: Tensor, feature_hw: tuple[int, int], stride: tuple[int, int]) -> Tensor:
    """Anchors at every cell of a feature map: ``Tensor[H * W * A, 4]`` ordered (y, x, anchor)."""
    h, w = feature_hw
    sy, sx = stride
    ys = torch.arange(h, dtype=torch.float32, device=base.device) * sy
    xs = torch.arange(w, dtype=torch.float32, device=base.device) * sx
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    shifts = torch.stack([x.reshape(-1), y.reshape(-1), x.reshape(-1), y.reshape(-1)], dim=1)
    return (shifts[:, None, :] + base[None, :, :]).reshape(-1, 4)


class RPN(nn.Module):
    """Region proposal network and proposal source.

    Args (keyword-only):
        in_channels: channels of every input feature map (they must agree).
        features: names of the feature maps to use, finest first.
        strides: their strides.
        anchor_sizes: one list of sizes per feature map.
        aspect_ratios: h / w ratios, the same on every map.
        pre_nms_top_n, post_nms_top_n: (train, test) counts; pre is per map, post per image.
        nms_thresh: NMS IoU between proposals.
        fg_iou, bg_iou: anchor labelling thresholds.
        batch_size_per_image, positive_fraction: anchors sampled for the loss.
        min_size: proposals smaller than this are dropped.
        rpn_loss, rpn_focal_gamma: the objectness loss, ``"bce"`` or ``"focal"`` (torchvision's
            ``sigmoid_focal_loss`` without the alpha balance: the sampled anchors are balanced
            already), summed over the sampled anchors and divided by their count.

    ``forward(features, batch)`` → (proposals: list of ``Tensor[P_i, 4]`` detached,
    losses ``{"loss_rpn_cls", "loss_rpn_box"}`` in training, else ``{}``).
    """

    def __init__(self, *, in_channels: int, features: Sequence[str], strides: Sequence[int],
                 anchor_sizes: Sequence[Sequence[float]], aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
                 pre_nms_top_n: tuple[int, int] = (2000, 1000),
                 post_nms_top_n: tuple[int, int] = (2000, 1000),
                 nms_thresh: float = 0.7, fg_iou: float = 0.7, bg_iou: float = 0.3,
                 batch_size_per_image: int = 256, positive_fraction: float = 0.5, min_size: float = 1e-3,
                 score_thresh: float = 0.0, rpn_loss: str = "bce", rpn_focal_gamma: float = 2.0):
        super().__init__()
        if rpn_loss not in ("bce", "focal"):
            raise ValueError(f"RPN loss must be 'bce' or 'focal', got {rpn_loss!r}")
        self.loss, self.focal_gamma = rpn_loss, float(rpn_focal_gamma)
        if not (len(features) == len(strides) == len(anchor_sizes)):
            raise ValueError("RPN: features, strides and anchor_sizes need one entry per feature map")
        self.features, self.strides = list(features), list(strides)
        counts = {len(s) * len(aspect_ratios) for s in anchor_sizes}
        if len(counts) != 1:
            raise ValueError("RPN: every feature map needs the same number of anchors per cell")
        self.num_anchors = counts.pop()
        for i, sizes in enumerate(anchor_sizes):
            self.register_buffer(f"base_{i}", cell_anchors(sizes, aspect_ratios), persistent=False)
        self.conv = nn.Conv2d(in_channels, in_channels, 3, padding=1)
        self.objectness = nn.Conv2d(in_channels, self.num_anchors, 1)
        self.deltas = nn.Conv2d(in_channels, 4 * self.num_anchors, 1)
        for layer in (self.conv, self.objectness, self.deltas):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)
        self.coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
        self.pre_nms_top_n, self.post_nms_top_n = tuple(pre_nms_top_n), tuple(post_nms_top_n)
        self.nms_thresh, self.fg_iou, self.bg_iou = nms_thresh, fg_iou, bg_iou
        self.batch_size_per_image, self.positive_fraction = batch_size_per_image, positive_fraction
        self.min_size, self.score_thresh = min_size, score_thresh

    def head(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x ``[B, C, H, W]`` → objectness ``[B, H*W*A]``, deltas ``[B, H*W*A, 4]``."""
        t = F.relu(self.conv(x))
        b, _, h, w = x.shape
        obj = self.objectness(t).permute(0, 2, 3, 1).reshape(b, -1)
        d = self.deltas(t).view(b, self.num_anchors, 4, h, w).permute(0, 3, 4, 1, 2).reshape(b, -1, 4)
        return obj, d

    def anchors(self, features: dict, image_hw: tuple[int, int]) -> list[Tensor]:
        out = []
        for i, name in enumerate(self.features):
            fh, fw = features[name].shape[-2:]
            # torchvision derives the step from the padded input size, not the nominal stride
            stride = (image_hw[0] // fh, image_hw[1] // fw)
            out.append(grid_anchors(getattr(self, f"base_{i}"), (fh, fw), stride))
        return out

    def forward(self, features: dict, batch) -> tuple[list[Tensor], dict]:
        batch = Batch.of(batch)  # a plain dict from one's own pipeline, read as a Batch
        image_hw = batch.padded_hw
        anchors = self.anchors(features, image_hw)
        objs, deltas = zip(*(self.head(features[n]) for n in self.features))
        levels = torch.cat([torch.full((a.shape[0],), i, device=a.device) for i, a in enumerate(anchors)])
        all_anchors = torch.cat(anchors)
        obj, delta = torch.cat(objs, dim=1), torch.cat(deltas, dim=1)
        proposals = self._select(obj.detach(), delta.detach(), all_anchors, levels,
                                 [a.shape[0] for a in anchors], batch.image_sizes)
        losses = self.losses(obj, delta, all_anchors, batch) if self.training else {}
        return proposals, losses

    def _select(self, obj: Tensor, delta: Tensor, anchors: Tensor, levels: Tensor,
                per_level: list[int], image_sizes) -> list[Tensor]:
        pre = self.pre_nms_top_n[0 if self.training else 1]
        post = self.post_nms_top_n[0 if self.training else 1]
        # Top-k per feature map, before decoding: the cheap step first.
        idx, start = [], 0
        for n in per_level:
            k = min(pre, n)
            idx.append(obj[:, start:start + n].topk(k, dim=1).indices + start)
            start += n
        idx = torch.cat(idx, dim=1)  # [B, sum k]
        out = []
        for i, (h, w) in enumerate(image_sizes):
            sel = idx[i]
            boxes = self.coder.decode(delta[i, sel], anchors[sel])
            boxes = clip_boxes(boxes, (h, w))
            scores = torch.sigmoid(obj[i, sel])
            lv = levels[sel]
            keep = nonempty(boxes, self.min_size) & (scores >= self.score_thresh)
            boxes, scores, lv = boxes[keep], scores[keep], lv[keep]
            keep = batched_nms(boxes, scores, lv, self.nms_thresh, max_keep=post,
                               num_classes=len(per_level))
            out.append(boxes[keep])
        return out

    def losses(self, obj: Tensor, delta: Tensor, anchors: Tensor, batch: dict) -> dict[str, Tensor]:
        labels, targets, regress_rows, rows = [], [], [], []
        for i, t in enumerate(batch.targets):
            gt = t["boxes"].to(anchors.device)
            matched, _ = match(anchors, gt, fg_iou=self.fg_iou, bg_iou=self.bg_iou,
                               allow_low_quality=True, ignore=t.get("ignore_boxes"))
            fg, bg = sample(matched, self.batch_size_per_image, self.positive_fraction)
            sel = torch.cat([fg, bg])
            rows.append(torch.stack([torch.full_like(sel, i), sel], dim=1))
            labels.append(torch.cat([torch.ones(len(fg)), torch.zeros(len(bg))]).to(obj))
            targets.append(self.coder.encode(anchors[fg], gt[matched[fg]]) if len(fg)
                           else torch.zeros(0, 4, device=obj.device))
            regress_rows.append(torch.stack([torch.full_like(fg, i), fg], dim=1))
        rows_t, reg_t = torch.cat(rows), torch.cat(regress_rows)
        n = max(1, rows_t.shape[0])
        picked, target = obj[rows_t[:, 0], rows_t[:, 1]], torch.cat(labels)
        if self.loss == "focal":
            loss_cls = sigmoid_focal_loss(picked, target, alpha=-1, gamma=self.focal_gamma, reduction="sum") / n
        else:
            loss_cls = F.binary_cross_entropy_with_logits(picked, target, reduction="sum") / n
        pred = delta[reg_t[:, 0], reg_t[:, 1]]
        loss_box = F.smooth_l1_loss(pred, torch.cat(targets), beta=1 / 9, reduction="sum") / n
        return {"loss_rpn_cls": loss_cls, "loss_rpn_box": loss_box}

