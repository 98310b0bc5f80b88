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
    from . import _roi_align_triton_kernels as k
    return k.forward, k.backward


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
