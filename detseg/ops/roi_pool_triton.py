"""Triton kernels for bin max pooling on CUDA tensors (forward and backward).

The same kernels run on CPU tensors under ``TRITON_INTERPRET=1``, which is how CI tests them.
They are compiled on first use, so importing this module needs no GPU and no compiler.
"""
from __future__ import annotations

import functools

import torch

from . import _reference

_INIT = {torch.float16: -65504.0, torch.bfloat16: -3.3895313892515355e38,
         torch.float32: -3.4028234663852886e38, torch.float64: -3.4028234663852886e38}


@functools.lru_cache(maxsize=None)
def _kernels():
    import triton
    import triton.language as tl

    @triton.jit
    def forward(in_ptr, batch_ptr, bins_ptr, layout_ptr, out_ptr, arg_ptr, C, B, H, W,
                INIT: tl.constexpr, BLOCK_C: tl.constexpr):
        # One program: one (RoI, bin) and a block of channels of the channels-last map.
        kb = tl.program_id(0)
        k = kb // B
        b = kb % B
        n = tl.load(batch_ptr + k)
        h0 = tl.load(bins_ptr + kb * 4)
        h1 = tl.load(bins_ptr + kb * 4 + 1)
        w0 = tl.load(bins_ptr + kb * 4 + 2)
        w1 = tl.load(bins_ptr + kb * 4 + 3)
        offs = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        cmask = offs < C
        dtype = in_ptr.dtype.element_ty
        best = tl.full([BLOCK_C], INIT, dtype)
        where = tl.full([BLOCK_C], -1, tl.int32)
        for h in range(h0, h1):
            for w in range(w0, w1):
                idx = h * W + w
                v = tl.load(in_ptr + (n * H * W + idx) * C + offs, mask=cmask, other=INIT)
                gt = v > best  # strict: first maximum wins, NaN never does
                best = tl.where(gt, v, best)
                where = tl.where(gt, idx, where)
        empty = (h1 <= h0) | (w1 <= w0)
        best = tl.where(empty, tl.zeros([BLOCK_C], dtype), best)
        dst = k * C * B + tl.load(layout_ptr + b * 2) + offs * tl.load(layout_ptr + b * 2 + 1)
        tl.store(out_ptr + dst, best, mask=cmask)
        tl.store(arg_ptr + dst, where, mask=cmask)

    @triton.jit
    def backward(grad_ptr, arg_ptr, batch_ptr, layout_ptr, gin_ptr, C, B, HW, BLOCK_C: tl.constexpr):
        kb = tl.program_id(0)
        k = kb // B
        b = kb % B
        n = tl.load(batch_ptr + k)
        offs = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        cmask = offs < C
        src = k * C * B + tl.load(layout_ptr + b * 2) + offs * tl.load(layout_ptr + b * 2 + 1)
        a = tl.load(arg_ptr + src, mask=cmask, other=-1)
        g = tl.load(grad_ptr + src, mask=cmask, other=0)
        ok = cmask & (a >= 0)
        tl.atomic_add(gin_ptr + (n * C + offs) * HW + a, g.to(gin_ptr.dtype.element_ty), mask=ok)

    return forward, backward


def block_size(c: int) -> int:
    """Channels per program: the next power of two, 16 to 128."""
    return max(16, min(128, 1 << (max(c, 1) - 1).bit_length()))


def layout_table(c: int, level_bins: list[int], device) -> torch.Tensor:
    return _layout_table(c, tuple(level_bins), torch.device(device))


@functools.lru_cache(maxsize=64)  # one small host-to-device copy per layout, not per call
def _layout_table(c: int, level_bins: tuple, device: torch.device) -> torch.Tensor:
    """``int32 [B, 2]``: where bin b of channel ch sits in a RoI's ``[C * B]`` output row,
    ``base + ch * stride`` (``_reference.to_level_major``'s layout: base = C * (level start) +
    (b - level start), stride = the level's bin count)."""
    rows = [(c * start + i, count) for start, count in _reference.level_spans(level_bins)
            for i in range(count)]
    return torch.tensor(rows, dtype=torch.int32).reshape(-1, 2).to(device)


def bin_max_pool_forward(input: torch.Tensor, batch_idx: torch.Tensor, bins: torch.Tensor,
                         level_bins: list[int]):
    """Triton version of ``_reference.bin_max_pool_forward`` (same arguments and results)."""
    forward, _ = _kernels()
    n, c, h, w = input.shape
    k, b = bins.shape[:2]
    out = input.new_empty((k, c * b))
    arg = torch.empty((k, c * b), dtype=torch.int32, device=input.device)
    if k * b * c == 0:
        return out.zero_(), arg.fill_(-1)
    nhwc = input.permute(0, 2, 3, 1).contiguous()
    block = block_size(c)
    grid = (k * b, (c + block - 1) // block)
    forward[grid](nhwc, batch_idx.long().contiguous(), bins.contiguous(),
                  layout_table(c, level_bins, input.device), out, arg, c, b, h, w,
                  INIT=_INIT[input.dtype], BLOCK_C=block)
    return out, arg


def bin_max_pool_backward(grad: torch.Tensor, argmax: torch.Tensor, batch_idx: torch.Tensor,
                          n: int, h: int, w: int, level_bins: list[int]) -> torch.Tensor:
    """Triton version of ``_reference.bin_max_pool_backward``; accumulates half types in float32."""
    _, backward = _kernels()
    k, b = grad.shape[0], sum(level_bins)
    c = grad.shape[1] // b
    acc_dtype = torch.float32 if grad.dtype in (torch.float16, torch.bfloat16) else grad.dtype
    gin = torch.zeros((n, c, h, w), dtype=acc_dtype, device=grad.device)
    if k * b * c > 0:
        block = block_size(c)
        grid = (k * b, (c + block - 1) // block)
        backward[grid](grad.contiguous(), argmax.contiguous(), batch_idx.long().contiguous(),
                       layout_table(c, level_bins, grad.device), gin, c, b, h * w, BLOCK_C=block)
    return gin.to(grad.dtype)
