"""Pure-PyTorch bin max pooling: the oracle for the kernels and the fallback when none loads.

Works for any dtype and device (float64 included).
"""
from __future__ import annotations

import torch

_EMPTY_INIT = -3.4028234663852886e38  # -FLT_MAX, torchvision's starting value for a non-empty bin


def bin_max_pool_forward(input: torch.Tensor, batch_idx: torch.Tensor, bins: torch.Tensor):
    """Max over each bin's window.

    Visits the window cells in row-major order, one offset ``(dh, dw)`` at a time for all bins
    and channels at once, keeping a running maximum that only a strictly greater value replaces:
    the kernels' scan, written as tensor operations. Memory is ``O(K * B * C)``.

    Args:
        input: ``Tensor[N, C, H, W]``.
        batch_idx: ``int64 Tensor[K]`` image of each RoI.
        bins: ``int32 Tensor[K, B, 4]`` (h_start, h_end, w_start, w_end) from ``bin_table``.

    Returns:
        (output ``Tensor[K, C, B]``, argmax ``int32 Tensor[K, C, B]`` = h * W + w of the first
        maximum in row-major scan order, -1 when no cell beat -FLT_MAX; an empty bin outputs 0).
    """
    n, c, h, w = input.shape
    k, b = bins.shape[:2]
    out = input.new_zeros((k, c, b))
    arg = torch.full((k, c, b), -1, dtype=torch.int32, device=input.device)
    if k == 0 or b == 0 or c == 0:
        return out, arg
    flat_bins = bins.reshape(-1, 4).long()
    hs, he, ws, we = flat_bins.unbind(1)  # [M] each, M = K * B
    heights, widths = (he - hs).clamp(min=0), (we - ws).clamp(min=0)
    # Offset of each (bin, channel) plane in the flattened input: (batch * C + channel) * H * W.
    plane = ((batch_idx.long().repeat_interleave(b)[:, None] * c
              + torch.arange(c, device=input.device)[None]) * (h * w))  # [M, C]
    flat_in = input.reshape(-1)
    best = torch.full((k * b, c), _EMPTY_INIT, dtype=input.dtype, device=input.device)
    where = torch.full((k * b, c), -1, dtype=torch.int64, device=input.device)
    # Bins sorted by window area and scanned in groups, each only over its own largest window:
    # an SPP level-1 bin's 19x19 window then costs nothing to the 6x6 level's small bins.
    order = torch.argsort(heights * widths)
    for group in torch.tensor_split(order, min(8, len(order))):
        gh, gw, g_hs, g_ws, g_plane = heights[group], widths[group], hs[group], ws[group], plane[group]
        g_best, g_where = best[group], where[group]
        for dh in range(int(gh.max())):
            row = (g_hs + dh).clamp(max=h - 1) * w
            for dw in range(int(gw.max())):
                inside = (dh < gh) & (dw < gw)
                cell = row + (g_ws + dw).clamp(max=w - 1)
                vals = flat_in[g_plane + cell[:, None]]  # [G, C]
                better = (vals > g_best) & inside[:, None]  # NaN compares False: never wins
                g_best = torch.where(better, vals, g_best)
                g_where = torch.where(better, cell[:, None].expand_as(g_where), g_where)
        best[group], where[group] = g_best, g_where
    empty = (heights == 0) | (widths == 0)
    best = torch.where(empty[:, None], torch.zeros((), dtype=input.dtype, device=input.device), best)
    out = best.reshape(k, b, c).transpose(1, 2).contiguous()
    arg = where.to(torch.int32).reshape(k, b, c).transpose(1, 2).contiguous()
    return out, arg


def bin_max_pool_backward(grad: torch.Tensor, argmax: torch.Tensor, batch_idx: torch.Tensor,
                          n: int, h: int, w: int) -> torch.Tensor:
    """Send each bin's gradient to its argmax.

    Args:
        grad: ``Tensor[K, C, B]``; argmax: ``int32 Tensor[K, C, B]``; batch_idx: ``Tensor[K]``.

    Returns:
        ``Tensor[N, C, H, W]``.
    """
    k, c, b = grad.shape
    grad_in = grad.new_zeros((n, c * h * w))
    if k == 0 or grad.numel() == 0:
        return grad_in.reshape(n, c, h, w)
    a = argmax.long()
    keep = a >= 0
    chan = torch.arange(c, device=grad.device)[None, :, None] * (h * w)
    target = (a + chan)[keep]
    rows = batch_idx.long()[:, None, None].expand(k, c, b)[keep]
    grad_in.index_put_((rows, target), grad[keep], accumulate=True)
    return grad_in.reshape(n, c, h, w)
