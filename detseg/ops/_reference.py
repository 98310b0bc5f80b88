"""Pure-PyTorch bin max pooling: the oracle for the kernels and the fallback when none loads.

Works for any dtype and device (float64 included). Gathers each bin's window into a padded
``[bins, C, max_h * max_w]`` block, in chunks so memory stays bounded.
"""
from __future__ import annotations

import torch

# Elements gathered per chunk (~256 MB of float32): bounds the reference's memory.
_CHUNK_ELEMENTS = 64 * 1024 * 1024
_EMPTY_INIT = -3.4028234663852886e38  # -FLT_MAX, torchvision's starting value for a non-empty bin


def bin_max_pool_forward(input: torch.Tensor, batch_idx: torch.Tensor, bins: torch.Tensor):
    """Max over each bin's window.

    Args:
        input: ``Tensor[N, C, H, W]``.
        batch_idx: ``int64 Tensor[K]`` image of each RoI.
        bins: ``int32 Tensor[K, B, 4]`` (h_start, h_end, w_start, w_end) from ``bin_table``.

    Returns:
        (output ``Tensor[K, C, B]``, argmax ``int32 Tensor[K, C, B]`` = h * W + w of the first
        maximum in row-major scan order, -1 for an empty bin; an empty bin outputs 0).
    """
    n, c, h, w = input.shape
    k, b = bins.shape[:2]
    out = input.new_zeros((k, c, b))
    arg = torch.full((k, c, b), -1, dtype=torch.int32, device=input.device)
    if k == 0 or b == 0 or c == 0:
        return out, arg
    flat_bins = bins.reshape(-1, 4).long()
    flat_batch = batch_idx.long().repeat_interleave(b)
    hs, he, ws, we = flat_bins.unbind(1)
    mh = int((he - hs).clamp(min=0).max())
    mw = int((we - ws).clamp(min=0).max())
    if mh == 0 or mw == 0:
        return out, arg
    dh = torch.arange(mh, device=input.device)
    dw = torch.arange(mw, device=input.device)
    flat_in = input.reshape(n, c, h * w)
    outs, args = [], []
    step = max(1, _CHUNK_ELEMENTS // max(1, c * mh * mw))
    for s in range(0, k * b, step):
        sl = slice(s, s + step)
        rows = hs[sl, None] + dh[None]  # [m, mh]
        cols = ws[sl, None] + dw[None]  # [m, mw]
        valid = (rows < he[sl, None])[:, :, None] & (cols < we[sl, None])[:, None, :]
        pos = (rows.clamp(max=h - 1)[:, :, None] * w + cols.clamp(max=w - 1)[:, None, :])
        pos = pos.reshape(len(rows), 1, mh * mw)
        vals = flat_in[flat_batch[sl]].gather(2, pos.expand(-1, c, -1))  # [m, C, mh*mw]
        valid = valid.reshape(len(rows), 1, mh * mw)
        init = torch.full((), _EMPTY_INIT, dtype=input.dtype, device=input.device)
        # The kernels' strictly-greater scan from -FLT_MAX: NaN never wins (its comparisons are
        # False), the first maximum does, and a window of only NaN / -inf keeps -FLT_MAX.
        vals = torch.where(valid & ~torch.isnan(vals), vals, init)
        best = torch.maximum(vals.amax(dim=2, keepdim=True), init)  # -inf never beats -FLT_MAX
        hit = (vals == best) & valid & (vals > init)
        order = torch.arange(mh * mw, device=input.device).expand_as(hit)
        first = torch.where(hit, order, mh * mw).amin(dim=2)  # [m, C]
        found = first < mh * mw
        a = torch.gather(pos.expand(-1, c, -1), 2, first.clamp(max=mh * mw - 1)[..., None])[..., 0]
        any_valid = valid.any(dim=2)  # [m, 1]
        o = torch.where(any_valid, best[..., 0], torch.zeros((), dtype=input.dtype, device=input.device))
        outs.append(o)
        args.append(torch.where(found, a, -1).to(torch.int32))
    out = torch.cat(outs).reshape(k, b, c).transpose(1, 2).contiguous()
    arg = torch.cat(args).reshape(k, b, c).transpose(1, 2).contiguous()
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
