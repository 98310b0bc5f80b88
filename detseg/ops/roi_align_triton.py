"""Triton kernels for RoIAlign on CUDA tensors (forward and backward).

They read ``_geometry.sample_table``'s table, like the C++ kernels. The same kernels run on CPU
tensors under ``TRITON_INTERPRET=1``, which is how CI tests them. Compiled on first use, so
importing this module needs no GPU and no compiler.
"""
from __future__ import annotations

import functools

import torch

from .roi_pool_triton import block_size


@functools.lru_cache(maxsize=None)
def _kernels():
    import triton
    import triton.language as tl

    @triton.jit
    def forward(in_ptr, batch_ptr, yi_ptr, yw_ptr, xi_ptr, xw_ptr, grid_ptr, out_ptr,
                C, H, W, PH, PW, SY, SX, BLOCK_C: tl.constexpr):
        # One program: one output bin (RoI k, row ph, column pw) and a block of channels of the
        # channels-last map.
        pid = tl.program_id(0)
        k = pid // (PH * PW)
        ph = (pid // PW) % PH
        pw = pid % PW
        n = tl.load(batch_ptr + k)
        gh = tl.load(grid_ptr + 2 * k)
        gw = tl.load(grid_ptr + 2 * k + 1)
        offs = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        cmask = offs < C
        acc = tl.zeros([BLOCK_C], yw_ptr.dtype.element_ty)
        for iy in range(0, gh):
            ye = ((k * PH + ph) * SY + iy) * 2
            ylo = tl.load(yi_ptr + ye)
            yhi = tl.load(yi_ptr + ye + 1)
            hy = tl.load(yw_ptr + ye)
            ly = tl.load(yw_ptr + ye + 1)
            for ix in range(0, gw):
                xe = ((k * PW + pw) * SX + ix) * 2
                xlo = tl.load(xi_ptr + xe)
                xhi = tl.load(xi_ptr + xe + 1)
                hx = tl.load(xw_ptr + xe)
                lx = tl.load(xw_ptr + xe + 1)
                m = cmask & (ylo >= 0) & (xlo >= 0)
                yl = tl.maximum(ylo, 0)
                xl = tl.maximum(xlo, 0)
                row_lo = (n * H + yl) * W
                row_hi = (n * H + yhi) * W
                v1 = tl.load(in_ptr + (row_lo + xl) * C + offs, mask=m, other=0.0)
                v2 = tl.load(in_ptr + (row_lo + xhi) * C + offs, mask=m, other=0.0)
                v3 = tl.load(in_ptr + (row_hi + xl) * C + offs, mask=m, other=0.0)
                v4 = tl.load(in_ptr + (row_hi + xhi) * C + offs, mask=m, other=0.0)
                acc += (hy * hx) * v1 + (hy * lx) * v2 + (ly * hx) * v3 + (ly * lx) * v4
        count = tl.maximum(gh * gw, 1).to(acc.dtype)
        tl.store(out_ptr + (k * C + offs) * (PH * PW) + ph * PW + pw, acc / count, mask=cmask)

    @triton.jit
    def backward(grad_ptr, batch_ptr, yi_ptr, yw_ptr, xi_ptr, xw_ptr, grid_ptr, gin_ptr,
                 C, H, W, PH, PW, SY, SX, BLOCK_C: tl.constexpr):
        pid = tl.program_id(0)
        k = pid // (PH * PW)
        ph = (pid // PW) % PH
        pw = pid % PW
        n = tl.load(batch_ptr + k)
        gh = tl.load(grid_ptr + 2 * k)
        gw = tl.load(grid_ptr + 2 * k + 1)
        offs = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        cmask = offs < C
        g = tl.load(grad_ptr + (k * C + offs) * (PH * PW) + ph * PW + pw, mask=cmask, other=0.0)
        g = g / tl.maximum(gh * gw, 1).to(g.dtype)
        plane = (n * C + offs) * (H * W)
        for iy in range(0, gh):
            ye = ((k * PH + ph) * SY + iy) * 2
            ylo = tl.load(yi_ptr + ye)
            yhi = tl.load(yi_ptr + ye + 1)
            hy = tl.load(yw_ptr + ye)
            ly = tl.load(yw_ptr + ye + 1)
            for ix in range(0, gw):
                xe = ((k * PW + pw) * SX + ix) * 2
                xlo = tl.load(xi_ptr + xe)
                xhi = tl.load(xi_ptr + xe + 1)
                hx = tl.load(xw_ptr + xe)
                lx = tl.load(xw_ptr + xe + 1)
                m = cmask & (ylo >= 0) & (xlo >= 0)
                yl = tl.maximum(ylo, 0)
                xl = tl.maximum(xlo, 0)
                tl.atomic_add(gin_ptr + plane + yl * W + xl, g * (hy * hx), mask=m)
                tl.atomic_add(gin_ptr + plane + yl * W + xhi, g * (hy * lx), mask=m)
                tl.atomic_add(gin_ptr + plane + yhi * W + xl, g * (ly * hx), mask=m)
                tl.atomic_add(gin_ptr + plane + yhi * W + xhi, g * (ly * lx), mask=m)

    return forward, backward


def _launch(kernel, tensor, batch_idx, table, dst, c: int, h: int, w: int):
    yi, yw, xi, xw, grid = table
    k, ph, sy = yi.shape[:3]
    pw, sx = xi.shape[1:3]
    block = block_size(c)
    kernel[(k * ph * pw, (c + block - 1) // block)](
        tensor, batch_idx.long().contiguous(), yi.contiguous(), yw.to(tensor.dtype).contiguous(),
        xi.contiguous(), xw.to(tensor.dtype).contiguous(), grid.contiguous(), dst,
        c, h, w, ph, pw, sy, sx, BLOCK_C=block)


def roi_align_forward(input: torch.Tensor, batch_idx: torch.Tensor, *table) -> torch.Tensor:
    """Triton version of ``_reference.roi_align_forward`` (same arguments and result);
    float32 / float64 input."""
    forward, _ = _kernels()
    n, c, h, w = input.shape
    k, ph, pw = table[0].shape[0], table[0].shape[1], table[2].shape[1]
    out = input.new_zeros((k, c, ph, pw))
    if out.numel() and h * w:
        _launch(forward, input.permute(0, 2, 3, 1).contiguous(), batch_idx, table, out, c, h, w)
    return out


def roi_align_backward(grad: torch.Tensor, batch_idx: torch.Tensor, *table_and_shape) -> torch.Tensor:
    """Triton version of ``_reference.roi_align_backward``; float32 / float64 (atomic adds, so the
    summation order, and the last bits, vary from run to run)."""
    _, backward = _kernels()
    *table, n, h, w = table_and_shape
    c = grad.shape[1]
    gin = grad.new_zeros((n, c, h, w))
    if grad.numel() and h * w:
        _launch(backward, grad.contiguous(), batch_idx, table, gin, c, h, w)
    return gin
