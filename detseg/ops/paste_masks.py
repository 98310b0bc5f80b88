"""Pasting fixed-size mask predictions into full images, all masks at once.

Each ``M x M`` mask is resampled bilinearly onto its box (the mask's cells span the box exactly,
sampling at pixel centres, zero beyond the mask's border) and thresholded. Bilinear resampling is
separable, so for a mask ``P`` the pasted box region is ``Wy @ P @ Wx^T`` with ``Wy [h, M]``,
``Wx [w, M]`` the interpolation weights of its rows and columns. All masks of a chunk are done
with two batched matrix products over the largest box of the chunk, then written into the
output in one indexed assignment: no Python loop per mask (torchvision's
``paste_masks_in_image`` loops, and allocates a float image per mask).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


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
    n, m = masks.shape[0], masks.shape[-1]
    h, w = image_size
    dtype = torch.bool if threshold is not None else masks.dtype
    # One spare row and column take the writes that fall outside the image.
    out = torch.zeros(n, h + 1, w + 1, dtype=dtype, device=masks.device)
    boxes = boxes.to(torch.float32)
    masks = masks.to(torch.float32)
    for s in range(0, n, chunk):
        b, p = boxes[s:s + chunk], masks[s:s + chunk]
        k = len(b)
        bw, bh = (b[:, 2] - b[:, 0]).clamp(min=1e-3), (b[:, 3] - b[:, 1]).clamp(min=1e-3)
        # rows/columns a mask can touch: bilinear weights reach half a mask cell beyond the box
        gx, gy = 0.5 * bw / m + 1, 0.5 * bh / m + 1
        x0 = (b[:, 0] - gx).floor().clamp(0, w - 1)
        y0 = (b[:, 1] - gy).floor().clamp(0, h - 1)
        x1 = (b[:, 2] + gx).ceil().clamp(1, w)
        y1 = (b[:, 3] + gy).ceil().clamp(1, h)
        lw = int((x1 - x0).max().item()) if k else 0
        lh = int((y1 - y0).max().item()) if k else 0
        if lw <= 0 or lh <= 0:
            continue
        wx = _weights_from(x0, b[:, 0], bw, lw, m)  # [k, lw, M]
        wy = _weights_from(y0, b[:, 1], bh, lh, m)
        local = torch.bmm(torch.bmm(wy, p), wx.transpose(1, 2))  # [k, lh, lw]
        cols = x0[:, None].long() + torch.arange(lw, device=b.device)
        rows = y0[:, None].long() + torch.arange(lh, device=b.device)
        cols = torch.where(cols < x1[:, None].long(), cols, w)  # beyond the box or image: spare
        rows = torch.where(rows < y1[:, None].long(), rows, h)
        idx = torch.arange(s, s + k, device=b.device)
        value = local >= threshold if threshold is not None else local
        out[idx[:, None, None], rows[:, :, None], cols[:, None, :]] = value
    return out[:, :h, :w]


def _weights_from(first_pixel: Tensor, box_start: Tensor, box_size: Tensor, length: int,
                  m: int) -> Tensor:
    """Weights ``[N, length, m]`` for pixels ``first_pixel + 0..length-1`` of masks spanning
    ``[box_start, box_start + box_size)``."""
    pix = first_pixel[:, None] + torch.arange(length, device=first_pixel.device, dtype=first_pixel.dtype)
    u = (pix + 0.5 - box_start[:, None]) / box_size[:, None] * m - 0.5
    j = torch.arange(m, device=first_pixel.device, dtype=first_pixel.dtype)
    return (1 - (u[:, :, None] - j).abs()).clamp(min=0)


def paste_masks_reference(masks: Tensor, boxes: Tensor, image_size: tuple[int, int],
                          threshold: float = 0.5) -> Tensor:
    """One mask at a time over the whole image with ``grid_sample`` (the oracle for tests)."""
    if masks.dim() == 4:
        masks = masks[:, 0]
    h, w = image_size
    out = []
    ys = torch.arange(h, dtype=torch.float64) + 0.5
    xs = torch.arange(w, dtype=torch.float64) + 0.5
    for p, (x0, y0, x1, y1) in zip(masks.double(), boxes.double().tolist()):
        # grid_sample's normalised coordinates: -1 and 1 are the outer edges of the mask
        gx = (xs - x0) / max(x1 - x0, 1e-3) * 2 - 1
        gy = (ys - y0) / max(y1 - y0, 1e-3) * 2 - 1
        grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1)[None]
        v = F.grid_sample(p[None, None], grid, mode="bilinear", padding_mode="zeros",
                          align_corners=False)[0, 0]
        out.append(v >= threshold if threshold is not None else v.float())
    dtype = torch.bool if threshold is not None else torch.float32
    return torch.stack(out) if out else torch.zeros(0, h, w, dtype=dtype)
