"""Convolutions that leave out, in training, the kernel taps that only ever read zero padding.

A 3x3 convolution with padding 1 on a 1x1 map reads its centre tap alone: the other eight fall
on the padding for every output. That is where a classifier's last stage runs at small inputs
(ResNet's layer4 on a 32-px image: three 512-channel 3x3 convolutions on 1x1 maps, one 3x3
stride-2 convolution from 2x2 to 1x1). oneDNN's forward pass is quick there, but its backward
pass computes all nine taps: on an AVX2-only CPU those four convolutions' backward took 150 of
the 260 ms of a ResNet-18 step on 64 images of 32 px (6x the same convolutions' forward).

``TrimmedConv2d`` is ``nn.Conv2d`` (same parameters, same state dict) whose training forward
convolves with the slice of the kernel whose taps reach the input, the padding reduced to match.
The result is the same sum without its zero terms, and autograd gives the left-out taps a zero
gradient, as the full convolution does: the same numbers up to rounding. Evaluation, tracing,
export and ``torch.compile`` take the ordinary path (the forward gains nothing there, and an
exported graph must not depend on the map size it was traced at).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _out_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """Outputs along one axis of a convolution (``nn.Conv2d``'s formula)."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def used_taps(size: int, kernel: int, stride: int, padding: int, dilation: int) -> tuple[int, int]:
    """The first and last kernel tap along one axis that reads an input cell for some output.

    Tap ``k`` of output ``o`` reads input ``o * stride - padding + k * dilation``; it is used when
    that lands in ``[0, size)`` for some ``o`` in ``[0, out)``.

    Returns:
        (first, last) tap indices; (0, kernel - 1) when every tap is used.
    """
    out = _out_size(size, kernel, stride, padding, dilation)
    used = []
    for k in range(kernel):
        shift = k * dilation - padding  # input index of output 0
        o = max(0, -(shift // stride))  # the first output whose index is >= 0: ceil(-shift / stride)
        if o < out and o * stride + shift <= size - 1:
            used.append(k)
    return (used[0], used[-1]) if used else (0, kernel - 1)


def _trim(size: int, kernel: int, stride: int, padding: int, dilation: int) -> tuple[int, int, int] | None:
    """(first tap, tap count, new padding) for one axis, or None when nothing is left out or the
    trimmed convolution would not have the same output positions."""
    first, last = used_taps(size, kernel, stride, padding, dilation)
    count = last - first + 1
    pad = padding - first * dilation
    if count == kernel or pad < 0:
        return None
    if _out_size(size, count, stride, pad, dilation) != _out_size(size, kernel, stride, padding, dilation):
        return None
    return first, count, pad


class _WindowConv(torch.autograd.Function):
    """conv2d with the ``window`` (y0, kh, x0, kw) of ``weight``; the weight's gradient written
    into a zero tensor of the weight's own layout (autograd's slice backward makes one in the
    default layout, and accumulating that into a channels-last weight costs two full copies: on a
    2-core CPU they took more time than the trimmed convolution saved)."""

    @staticmethod
    def forward(ctx, x, weight, bias, window, stride, padding, dilation, groups):
        y0, kh, x0, kw = window
        ctx.dtypes = x.dtype, None if bias is None else bias.dtype
        w = weight[:, :, y0:y0 + kh, x0:x0 + kw]
        device = x.device.type
        if torch.is_autocast_enabled(device):  # autocast's casts, made here so backward has them
            dtype = torch.get_autocast_dtype(device)
            x, w = x.to(dtype), w.to(dtype)
            bias = None if bias is None else bias.to(dtype)
        with torch.autocast(device, enabled=False):
            y = F.conv2d(x, w, bias, stride, padding, dilation, groups)
        ctx.save_for_backward(x, w, weight)  # weight: the gradient's shape and layout
        ctx.conv = window, stride, padding, dilation, groups
        return y

    @staticmethod
    def backward(ctx, grad):
        x, w, weight = ctx.saved_tensors
        (y0, kh, x0, kw), stride, padding, dilation, groups = ctx.conv
        x_dtype, b_dtype = ctx.dtypes
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        gx, gw, gb = torch.ops.aten.convolution_backward(
            grad.to(w.dtype), x, w, None if b_dtype is None else [w.shape[0]], list(stride),
            list(padding), list(dilation), False, [0, 0], groups,
            [need_x, need_w, b_dtype is not None and need_b])
        full = None
        if need_w:
            full = torch.zeros_like(weight)  # preserve_format: channels-last stays channels-last
            full[:, :, y0:y0 + kh, x0:x0 + kw] = gw
        return (None if gx is None else gx.to(x_dtype), full, None if gb is None else gb.to(b_dtype),
                None, None, None, None, None)


class TrimmedConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose training forward skips the taps that read only zero padding.

    x: ``Tensor[B, C_in, H, W]`` → ``Tensor[B, C_out, H_out, W_out]``, as ``nn.Conv2d``.
    """

    def _get_name(self) -> str:
        return "Conv2d"  # printed models and layer tables show what the layer computes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (not self.training or not torch.is_grad_enabled() or self.padding_mode != "zeros"
                or isinstance(self.padding, str) or torch.compiler.is_compiling()
                or torch.jit.is_tracing() or torch.jit.is_scripting()):
            return super().forward(x)
        h, w = x.shape[-2:]
        trim = (_trim(h, self.kernel_size[0], self.stride[0], self.padding[0], self.dilation[0]),
                _trim(w, self.kernel_size[1], self.stride[1], self.padding[1], self.dilation[1]))
        if trim == (None, None):
            return super().forward(x)
        (y0, kh, ph), (x0, kw, pw) = (t or (0, k, p) for t, k, p in
                                      zip(trim, self.kernel_size, self.padding))
        return _WindowConv.apply(x, self.weight, self.bias, (y0, kh, x0, kw), self.stride, (ph, pw),
                                 self.dilation, self.groups)


def trim_padding_taps(module: nn.Module, min_weights: int = 1 << 18) -> int:
    """Make every plain ``nn.Conv2d`` in ``module`` with a kernel wider than 1x1 and at least
    ``min_weights`` weights a ``TrimmedConv2d`` (in place: parameters, hooks and state-dict keys
    stay). Returns how many were changed.

    Smaller convolutions stay plain: their whole backward costs less than the trimmed path's own
    work (the zeroed full-size gradient, the autograd function): DenseNet-121's 3x3 convolutions
    (32 x 128 x 3 x 3, 37k weights) on its 1x1 maps at 32 px made its step 5% slower trimmed on
    AVX2, where ResNet-18's layer4 (2.4M weights a convolution) made it twice as fast
    (benchmarks/trimmed_conv.py)."""
    changed = 0
    for m in module.modules():
        if type(m) is nn.Conv2d and max(m.kernel_size) > 1 and m.weight.numel() >= min_weights:
            m.__class__ = TrimmedConv2d
            changed += 1
    return changed
