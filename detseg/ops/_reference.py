"""Pure-PyTorch bin max pooling: the oracle for the kernels and the fallback when none loads.

Works for any dtype and device (float64 included).
"""
from __future__ import annotations

import torch

_EMPTY_INIT = -3.4028234663852886e38  # -FLT_MAX, torchvision's starting value for a non-empty bin


def level_spans(level_bins: list[int]) -> list[tuple[int, int]]:
    """``(first bin, bin count)`` of each pyramid level, from the levels' bin counts."""
    spans, start = [], 0
    for count in level_bins:
        spans.append((start, count))
        start += count
    return spans


def to_level_major(t: torch.Tensor, level_bins: list[int]) -> torch.Tensor:
    """``[K, B, C]`` → ``[K, C * B]`` in the ops' output layout: for each level in turn, its
    ``[C, B_level]`` block, flattened (what a per-level pooling, flattened and concatenated, gives;
    with one level it is ``[K, C, B]``)."""
    k = t.shape[0]
    return torch.cat([t[:, s:s + n].transpose(1, 2).reshape(k, -1) for s, n in level_spans(level_bins)],
                     dim=1)


def from_level_major(t: torch.Tensor, channels: int, level_bins: list[int]) -> torch.Tensor:
    """The inverse of ``to_level_major``'s layout: ``[K, C * B]`` → ``[K, C, B]``."""
    k, parts = t.shape[0], []
    for s, n in level_spans(level_bins):
        parts.append(t[:, channels * s:channels * (s + n)].reshape(k, channels, n))
    return torch.cat(parts, dim=2)


def bin_max_pool_forward(input: torch.Tensor, batch_idx: torch.Tensor, bins: torch.Tensor,
                         level_bins: list[int] | None = None):
    """Max over each bin's window.

    Visits the window cells in row-major order, one offset ``(dh, dw)`` at a time for all bins
    and channels at once, keeping a running maximum that only a strictly greater value replaces:
    the kernels' scan, written as tensor operations. Memory is ``O(K * B * C)``.

    Args:
        input: ``Tensor[N, C, H, W]``.
        batch_idx: ``int64 Tensor[K]`` image of each RoI.
        bins: ``int32 Tensor[K, B, 4]`` (h_start, h_end, w_start, w_end) from ``bin_table``.
        level_bins: bins per pyramid level, summing to B (None: one level).

    Returns:
        (output ``Tensor[K, C * B]``, argmax ``int32 Tensor[K, C * B]`` = h * W + w of the first
        maximum in row-major scan order, -1 when no cell beat -FLT_MAX; an empty bin outputs 0),
        both in ``to_level_major``'s layout.
    """
    n, c, h, w = input.shape
    k, b = bins.shape[:2]
    out = input.new_zeros((k, c * b))
    arg = torch.full((k, c * b), -1, dtype=torch.int32, device=input.device)
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
    levels = level_bins or [b]
    return (to_level_major(best.reshape(k, b, c), levels),
            to_level_major(where.to(torch.int32).reshape(k, b, c), levels))


def bin_max_pool_backward(grad: torch.Tensor, argmax: torch.Tensor, batch_idx: torch.Tensor,
                          n: int, h: int, w: int, level_bins: list[int]) -> torch.Tensor:
    """Send each bin's gradient to its argmax.

    Args:
        grad, argmax: ``Tensor[K, C * B]`` in the forward's layout (``int32`` argmax);
        batch_idx: ``Tensor[K]``; level_bins: bins per level, summing to B.

    Returns:
        ``Tensor[N, C, H, W]``.
    """
    k, b = grad.shape[0], sum(level_bins)
    c = grad.shape[1] // b if b else 0
    grad_in = grad.new_zeros((n, c * h * w))
    if k == 0 or grad.numel() == 0:
        return grad_in.reshape(n, c, h, w)
    grad, argmax = from_level_major(grad, c, level_bins), from_level_major(argmax, c, level_bins)
    a = argmax.long()
    keep = a >= 0
    chan = torch.arange(c, device=grad.device)[None, :, None] * (h * w)
    target = (a + chan)[keep]
    rows = batch_idx.long()[:, None, None].expand(k, c, b)[keep]
    grad_in.index_put_((rows, target), grad[keep], accumulate=True)
    return grad_in.reshape(n, c, h, w)


# --------------------------------------------------------------------------- RoIAlign


def _corners(table):
    """Per sample-pair ``(iy, ix)``: validity [K, PH, PW] and the four corners' (row, col, weight)."""
    yi, yw, xi, xw = table
    for iy in range(yi.shape[2]):
        ylo, yhi = yi[:, :, iy, 0].long()[:, :, None], yi[:, :, iy, 1].long()[:, :, None]
        hy, ly = yw[:, :, iy, 0][:, :, None], yw[:, :, iy, 1][:, :, None]
        for ix in range(xi.shape[2]):
            xlo, xhi = xi[:, :, ix, 0].long()[:, None, :], xi[:, :, ix, 1].long()[:, None, :]
            hx, lx = xw[:, :, ix, 0][:, None, :], xw[:, :, ix, 1][:, None, :]
            valid = (ylo >= 0) & (xlo >= 0)  # [K, PH, PW]
            yl, xl = ylo.clamp(min=0), xlo.clamp(min=0)
            yield valid, [(yl, xl, hy * hx), (yl, xhi, hy * lx), (yhi, xl, ly * hx), (yhi, xhi, ly * lx)]


def roi_align_forward(input: torch.Tensor, batch_idx: torch.Tensor, y_index, y_weight, x_index,
                      x_weight, grid) -> torch.Tensor:
    """RoIAlign from ``_geometry.sample_table``'s table, as tensor operations (any dtype / device).

    Args:
        input: ``Tensor[N, C, H, W]``; batch_idx: ``int64 Tensor[K]``; the rest: the table.

    Returns:
        ``Tensor[K, C, PH, PW]``.
    """
    n, c, h, w = input.shape
    k, ph, pw = y_index.shape[0], y_index.shape[1], x_index.shape[1]
    acc = input.new_zeros((k, ph, pw, c))
    if acc.numel() == 0 or h * w == 0:
        return acc.permute(0, 3, 1, 2).contiguous()
    nhwc = input.permute(0, 2, 3, 1)
    b = batch_idx.long()[:, None, None]
    for valid, corners in _corners((y_index, y_weight.to(input.dtype), x_index, x_weight.to(input.dtype))):
        val = None
        for y, x, wt in corners:  # corner order and left-to-right sum as the kernels
            term = wt[..., None] * nhwc[b, y, x]
            val = term if val is None else val + term
        acc = acc + torch.where(valid[..., None], val, torch.zeros((), dtype=acc.dtype, device=acc.device))
    count = (grid[:, 0] * grid[:, 1]).clamp(min=1).to(input.dtype)
    return (acc / count[:, None, None, None]).permute(0, 3, 1, 2).contiguous()


def roi_align_backward(grad: torch.Tensor, batch_idx: torch.Tensor, y_index, y_weight, x_index,
                       x_weight, grid, n: int, h: int, w: int) -> torch.Tensor:
    """Gradient of ``roi_align_forward`` w.r.t. its input: ``Tensor[N, C, H, W]``."""
    k, c = grad.shape[:2]
    gin = grad.new_zeros((n, h, w, c))
    if grad.numel() == 0 or h * w == 0:
        return gin.permute(0, 3, 1, 2).contiguous()
    g = grad.permute(0, 2, 3, 1)  # [K, PH, PW, C]
    count = (grid[:, 0] * grid[:, 1]).clamp(min=1).to(grad.dtype)[:, None, None, None]
    b = batch_idx.long()[:, None, None]
    for valid, corners in _corners((y_index, y_weight.to(grad.dtype), x_index, x_weight.to(grad.dtype))):
        for y, x, wt in corners:
            share = g * wt[..., None] / count
            shape = valid.shape
            gin.index_put_((b.expand(shape)[valid], y.expand(shape)[valid], x.expand(shape)[valid]),
                           share[valid], accumulate=True)
    return gin.permute(0, 3, 1, 2).contiguous()
