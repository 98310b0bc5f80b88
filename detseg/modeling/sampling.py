"""Matching proposals (or windows, or anchors) to ground truth and sampling a training batch.

The same two steps serve the RPN, the sliding-window head and the region heads: label each
candidate by its best IoU with ground truth, then draw a fixed-size sample with a capped share
of foreground.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor
from torchvision.ops import box_iou

BACKGROUND = -1  # matched index of a background candidate
IGNORED = -2     # neither foreground nor background: not sampled


def match(candidates: Tensor, gt: Tensor, *, fg_iou: float, bg_iou: float, bg_iou_low: float = 0.0,
          allow_low_quality: bool = False, ignore: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """Assign each candidate to a ground-truth box.

    Args:
        candidates: ``Tensor[N, 4]``; gt: ``Tensor[G, 4]``.
        fg_iou: best IoU >= this → foreground (matched to that box).
        bg_iou: best IoU in ``[bg_iou_low, bg_iou)`` → background; other IoUs → ignored.
        allow_low_quality: also make each gt box's best candidate(s) foreground (RPN), so that
            every object has at least one positive.
        ignore: ``Tensor[M, 4]`` crowd boxes; a background candidate mostly inside one
            (IoA > 0.5) is ignored instead.

    Returns:
        (matched ``Tensor[N]`` int64: gt index, ``BACKGROUND`` or ``IGNORED``;
         best_iou ``Tensor[N]``).
    """
    n = candidates.shape[0]
    if gt.shape[0] == 0:
        matched = torch.full((n,), BACKGROUND, dtype=torch.long, device=candidates.device)
        best = torch.zeros(n, device=candidates.device)
    else:
        iou = box_iou(gt, candidates)  # [G, N]
        best, idx = iou.max(dim=0)
        matched = idx.clone()
        matched[best < fg_iou] = IGNORED
        matched[(best < bg_iou) & (best >= bg_iou_low)] = BACKGROUND
        if allow_low_quality:
            best_per_gt = iou.max(dim=1, keepdim=True).values
            g, c = torch.nonzero((iou == best_per_gt) & (best_per_gt > 0), as_tuple=True)
            matched[c] = idx[c]
    if ignore is not None and ignore.shape[0] and n:
        lt = torch.max(candidates[None, :, :2], ignore[:, None, :2])
        rb = torch.min(candidates[None, :, 2:], ignore[:, None, 2:])
        wh = (rb - lt).clamp(min=0)
        area = ((candidates[:, 2] - candidates[:, 0]) * (candidates[:, 3] - candidates[:, 1])).clamp(min=1e-6)
        ioa = (wh[..., 0] * wh[..., 1] / area).max(dim=0).values
        matched[(matched == BACKGROUND) & (ioa > 0.5)] = IGNORED
    return matched, best


def sample(matched: Tensor, batch_size: int, fg_fraction: float,
           generator: Optional[torch.Generator] = None) -> tuple[Tensor, Tensor]:
    """Draw at most ``batch_size`` candidates, at most ``fg_fraction`` of them foreground.

    Returns:
        (fg_idx ``Tensor[F]``, bg_idx ``Tensor[B]``): indices into ``matched``.
    """
    fg = torch.nonzero(matched >= 0).flatten()
    bg = torch.nonzero(matched == BACKGROUND).flatten()
    n_fg = min(fg.numel(), int(batch_size * fg_fraction))
    n_bg = min(bg.numel(), batch_size - n_fg)

    def pick(idx: Tensor, k: int) -> Tensor:
        perm = torch.randperm(idx.numel(), generator=generator, device="cpu")[:k]
        return idx[perm.to(idx.device)]

    return pick(fg, n_fg), pick(bg, n_bg)


def sampled_targets(candidates: Tensor, gt: Tensor, gt_labels: Tensor, matched: Tensor, fg: Tensor,
                    bg: Tensor, coder, background: int) -> tuple[Tensor, Tensor, Tensor]:
    """Classification and box-regression targets of a drawn sample, foreground rows first.

    Args:
        candidates: ``Tensor[N, 4]``; gt / gt_labels: ``Tensor[G, 4]`` / ``Tensor[G]``;
        matched: ``match``'s assignment; fg, bg: ``sample``'s (or a caller's) indices;
        coder: a ``BoxCoder``; background: the class index of background rows.

    Returns:
        (sel ``Tensor[F + B]`` indices into ``candidates``, labels ``Tensor[F + B]`` int64,
        box targets ``Tensor[F + B, 4]``: encoded for the F foreground rows, zero after).
    """
    sel = torch.cat([fg, bg])
    labels = torch.full((len(sel),), background, dtype=torch.long, device=candidates.device)
    targets = torch.zeros(len(sel), 4, device=candidates.device)
    if len(fg):
        labels[: len(fg)] = gt_labels.to(candidates.device)[matched[fg]]
        targets[: len(fg)] = coder.encode(candidates[fg], gt[matched[fg]])
    return sel, labels, targets
