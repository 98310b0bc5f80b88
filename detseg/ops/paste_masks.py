"""Pasting fixed-size mask predictions into full images, all masks at once.

The geometry is torchvision's (and so Mask R-CNN's as published with it): each ``M x M`` mask
is padded by one zero cell, its box enlarged by ``(M + 2) / M`` and truncated to integer pixels,
the padded mask resized bilinearly (``align_corners=False``) to the box's integer size and copied
into the image. Imported torchvision weights therefore give torchvision's masks.

Bilinear resizing is separable, so a mask's box region is ``Wy @ P @ Wx^T`` with ``Wy [h, M+2]``
and ``Wx [w, M+2]`` the interpolation weights of its rows and columns. All masks of a chunk are
done with two batched matrix products over the chunk's largest box and written into the output
with one indexed assignment: no Python loop per mask (torchvision's ``paste_masks_in_image``
loops, and allocates a float image per mask).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ._fx import fx_leaf


def _resize_weights(sizes: Tensor, length: int, m: int) -> Tensor:
    """Weights ``[N, length, m]`` of ``F.interpolate(mode="bilinear", align_corners=False)``
    from ``m`` cells to ``sizes[i]`` pixels (rows beyond ``sizes[i]`` are zero)."""
    dst = torch.arange(length, device=sizes.device, dtype=torch.float32)[None, :]
    sizes_f = sizes.to(torch.float32)[:, None]
    scale = torch.full_like(sizes_f, m) / sizes_f  # a true division (``m / t`` multiplies by 1 / t)
    # scale * (dst + 0.5) - 0.5 rounded once, as PyTorch's kernel computes it (a fused
    # multiply-add): float32 operands, exact in float64, then one rounding to float32.
    src = (scale.double() * (dst + 0.5).double() - 0.5).float().clamp(min=0)
    i0 = src.floor().clamp(max=m - 1)
    frac = src - i0
    i0 = i0.long()
    i1 = (i0 + 1).clamp(max=m - 1)
    w = torch.zeros(sizes.shape[0], length, m, device=sizes.device)
    w.scatter_add_(2, i0[..., None], (1 - frac)[..., None])
    w.scatter_add_(2, i1[..., None], frac[..., None])
    return w * (dst < sizes[:, None]).to(w.dtype)[..., None]


@fx_leaf
def paste_masks(masks: Tensor, boxes: Tensor, image_size: tuple[int, int], threshold: float = 0.5,
                chunk: int = 32) -> Tensor:
    """Paste mask probabilities into the image and threshold them.

    Args:
        masks: ``Tensor[N, M, M]`` probabilities (or ``[N, 1, M, M]``).
        boxes: ``Tensor[N, 4]`` xyxy in the image's pixels.
        image_size: (H, W).
        threshold: a pixel is in the mask when its probability is >= this; ``None`` returns the
            pasted probabilities (float) instead.
        chunk: masks per batched product (bounds memory: chunk x largest box area).

    Returns:
        ``Tensor[N, H, W]`` bool (or float when ``threshold`` is None).
    """
    if masks.dim() == 4:
        masks = masks[:, 0]
    if masks.dim() != 3 or boxes.dim() != 2 or boxes.shape[1] != 4 or len(boxes) != len(masks):
        raise ValueError(f"paste_masks needs masks [N, M, M] and boxes [N, 4], got {tuple(masks.shape)} "
                         f"and {tuple(boxes.shape)}")
    h, w = image_size
    return paste_masks_op(masks, boxes, int(h), int(w), threshold, int(chunk))


@torch.library.custom_op("detseg::paste_masks", mutates_args=())
def paste_masks_op(masks: Tensor, boxes: Tensor, height: int, width: int, threshold: Optional[float],
                   chunk: int) -> Tensor:
    """``paste_masks`` as one op (shape-only fake below), so compile and export see one call."""
    n, m = masks.shape[0], masks.shape[-1]
    h, w = height, width
    masks = F.pad(masks.to(torch.float32), (1, 1, 1, 1))  # one zero cell all round
    scale = (m + 2) / m
    b = boxes.to(torch.float32)
    half_w, half_h = (b[:, 2] - b[:, 0]) * 0.5 * scale, (b[:, 3] - b[:, 1]) * 0.5 * scale
    cx, cy = (b[:, 2] + b[:, 0]) * 0.5, (b[:, 3] + b[:, 1]) * 0.5
    ib = torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], dim=1).to(torch.int64)
    bw = (ib[:, 2] - ib[:, 0] + 1).clamp(min=1)
    bh = (ib[:, 3] - ib[:, 1] + 1).clamp(min=1)
    dtype = torch.bool if threshold is not None else torch.float32
    # One spare row and column take the writes that fall outside the image.
    out = torch.zeros(n, h + 1, w + 1, dtype=dtype, device=masks.device)
    for s in range(0, n, chunk):
        sl = slice(s, s + chunk)
        lw, lh = int(bw[sl].max()), int(bh[sl].max())
        wx = _resize_weights(bw[sl], lw, m + 2)
        wy = _resize_weights(bh[sl], lh, m + 2)
        # along x first, then y: the order of PyTorch's bilinear kernel, so the sums round alike
        local = torch.bmm(wy, torch.bmm(masks[sl], wx.transpose(1, 2)))  # [k, lh, lw]
        cols = ib[sl, 0, None] + torch.arange(lw, device=masks.device)
        rows = ib[sl, 1, None] + torch.arange(lh, device=masks.device)
        cols = torch.where((cols >= 0) & (cols < w) & (cols < ib[sl, 0, None] + bw[sl, None]), cols, w)
        rows = torch.where((rows >= 0) & (rows < h) & (rows < ib[sl, 1, None] + bh[sl, None]), rows, h)
        idx = torch.arange(s, s + local.shape[0], device=masks.device)
        value = local >= threshold if threshold is not None else local
        out[idx[:, None, None], rows[:, :, None], cols[:, None, :]] = value
    return out[:, :h, :w]


@paste_masks_op.register_fake
def _(masks, boxes, height, width, threshold, chunk):
    dtype = torch.bool if threshold is not None else torch.float32
    return masks.new_empty((masks.shape[0], height, width), dtype=dtype)
