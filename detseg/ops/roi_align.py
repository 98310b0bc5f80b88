"""RoIAlign (Mask R-CNN): public API, autograd, device dispatch.

``detseg::roi_align`` and ``detseg::roi_align_backward`` have torchvision's schemas. Each op
computes the sample table (``_geometry.sample_table``, the one statement of the geometry) and
hands it to a kernel picked by device: Triton for CUDA tensors, the C++ extension on CPU, the
pure-PyTorch reference otherwise. float16 / bfloat16 inputs are computed in float32 and the
result cast back. Fake (shape-only) implementations let ``torch.compile`` and ``torch.export``
trace through; ``torch.fx`` sees ``roi_align`` as one leaf call.
"""
from __future__ import annotations

from typing import Union

import torch
from torch import Tensor, nn

from . import _ext, _reference
from ._ext import backend, compute_dtype, load_extension
from ._fx import fx_leaf
from ._geometry import sample_table
from ._rois import Rois, pair, roi_tensor


def _kernel(device: torch.device):
    """(forward, backward) kernel functions for tensors on ``device``."""
    kind = backend(device)
    if kind == "triton":
        from . import roi_align_triton
        return roi_align_triton.roi_align_forward, roi_align_triton.roi_align_backward
    if kind == "cpp":
        ext = load_extension()
        return ext.roi_align_forward, ext.roi_align_backward
    return _reference.roi_align_forward, _reference.roi_align_backward


def _table(rois: Tensor, dtype, pooled_height, pooled_width, spatial_scale, sampling_ratio, aligned,
           height, width):
    rois = rois.to(dtype)
    table = sample_table(rois, (pooled_height, pooled_width), spatial_scale, sampling_ratio,
                         aligned, height, width)
    return rois[:, 0].to(torch.int64), table


@torch.library.custom_op("detseg::roi_align", mutates_args=())
def roi_align_op(input: Tensor, rois: Tensor, spatial_scale: float, pooled_height: int,
                 pooled_width: int, sampling_ratio: int, aligned: bool) -> Tensor:
    """``[K, C, pooled_height, pooled_width]`` from ``input [N, C, H, W]`` and ``rois [K, 5]``."""
    dtype = compute_dtype(input.dtype)
    batch, table = _table(rois, dtype, pooled_height, pooled_width, spatial_scale, sampling_ratio,
                          aligned, input.shape[2], input.shape[3])
    forward, _ = _kernel(input.device)
    return forward(input.to(dtype), batch, *table).to(input.dtype)


@roi_align_op.register_fake
def _(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned):
    return input.new_empty((rois.shape[0], input.shape[1], pooled_height, pooled_width))


@torch.library.custom_op("detseg::roi_align_backward", mutates_args=())
def roi_align_backward_op(grad: Tensor, rois: Tensor, spatial_scale: float, pooled_height: int,
                          pooled_width: int, batch_size: int, channels: int, height: int, width: int,
                          sampling_ratio: int, aligned: bool) -> Tensor:
    """Gradient of ``detseg::roi_align`` w.r.t. its input: ``[batch_size, channels, height, width]``."""
    dtype = compute_dtype(grad.dtype)
    batch, table = _table(rois, dtype, pooled_height, pooled_width, spatial_scale, sampling_ratio,
                          aligned, height, width)
    _, backward = _kernel(grad.device)
    return backward(grad.to(dtype), batch, *table, batch_size, height, width).to(grad.dtype)


@roi_align_backward_op.register_fake
def _(grad, rois, spatial_scale, pooled_height, pooled_width, batch_size, channels, height, width,
      sampling_ratio, aligned):
    return grad.new_empty((batch_size, channels, height, width))


def _setup_context(ctx, inputs, output):
    input, rois, spatial_scale, ph, pw, sampling_ratio, aligned = inputs
    ctx.save_for_backward(rois)
    ctx.args = (spatial_scale, ph, pw, sampling_ratio, aligned)
    ctx.input_shape = tuple(input.shape)


def _backward(ctx, grad):
    (rois,) = ctx.saved_tensors
    spatial_scale, ph, pw, sampling_ratio, aligned = ctx.args
    n, c, h, w = ctx.input_shape
    grad_in = roi_align_backward_op(grad.contiguous(), rois, spatial_scale, ph, pw, n, c, h, w,
                                    sampling_ratio, aligned)
    return grad_in, None, None, None, None, None, None


roi_align_op.register_autograd(_backward, setup_context=_setup_context)


@fx_leaf
def roi_align(input: Tensor, boxes: Rois, output_size: Union[int, tuple[int, int]],
              spatial_scale: float = 1.0, sampling_ratio: int = -1, aligned: bool = False) -> Tensor:
    """RoIAlign (He et al. 2017); same call and result as ``torchvision.ops.roi_align``.

    Each output bin averages ``sampling_ratio x sampling_ratio`` bilinear samples of the map
    (``sampling_ratio <= 0``: ``ceil(roi size / output size)`` per axis, per RoI).

    Args:
        input: ``Tensor[N, C, H, W]`` feature map (any float dtype; float16 / bfloat16 are
            computed in float32).
        boxes: ``Tensor[K, 5]`` (batch index, x1, y1, x2, y2) or a list of per-image ``Tensor[L, 4]``.
        output_size: ``int`` or ``(h, w)``.
        spatial_scale: feature-map size / image size (1 / stride).
        sampling_ratio: samples per bin and axis; ``-1`` (or 0): adaptive.
        aligned: shift boxes by -0.5 pixel so that sample points sit on pixel centres (use for
            masks); False is the original Mask R-CNN / torchvision detector behaviour.

    Returns:
        ``Tensor[K, C, h, w]`` in ``input``'s dtype.
    """
    if input.dim() != 4:
        raise ValueError(f"input must be Tensor[N, C, H, W], got shape {tuple(input.shape)}")
    oh, ow = pair(output_size)
    rois = roi_tensor(boxes, compute_dtype(input.dtype), input.device)
    if _ext.runs_torchvision(input, "roi_align"):
        import torchvision  # the same op, its CUDA kernel: see _ext.cuda_kernels
        return torchvision.ops.roi_align(input, rois.to(input.dtype), (oh, ow), float(spatial_scale),
                                         int(sampling_ratio), bool(aligned))
    ext = load_extension() if input.device.type == "cpu" and not torch.compiler.is_compiling() else None
    if ext is not None:
        # Eager on the CPU: the sample table in one C++ call (bit-equal to _geometry's,
        # tests/ops/test_bin_table.py) and the kernels called without the custom ops' dispatch,
        # which cost many times torchvision's whole call with few RoIs. Compiled and exported
        # graphs keep the custom ops (the same kernels).
        table = ext.roi_align_table(rois, oh, ow, float(spatial_scale), int(sampling_ratio),
                                    bool(aligned), input.shape[2], input.shape[3])
        if not (input.requires_grad and torch.is_grad_enabled()):
            return ext.roi_align_forward(input.to(rois.dtype), *table).to(input.dtype)
        return _EagerRoIAlign.apply(input, *table)
    return roi_align_op(input, rois, float(spatial_scale), oh, ow, int(sampling_ratio), bool(aligned))


class _EagerRoIAlign(torch.autograd.Function):
    """``detseg::roi_align`` with its gradient for eager CPU calls: the C++ kernels of the custom
    ops without their dispatch; the table (batch, y_index, y_weight, x_index, x_weight, grid) is
    kept for the backward instead of recomputed."""

    @staticmethod
    def forward(ctx, input: Tensor, *table: Tensor) -> Tensor:
        ctx.save_for_backward(*table)
        ctx.input_shape = tuple(input.shape)
        ctx.set_materialize_grads(False)
        dtype = table[2].dtype  # the compute dtype, the rois'
        return load_extension().roi_align_forward(input.to(dtype), *table).to(input.dtype)

    @staticmethod
    def backward(ctx, grad):
        if grad is None:
            return (None,) * 7
        table = ctx.saved_tensors
        n, _, h, w = ctx.input_shape
        grad_in = load_extension().roi_align_backward(grad.contiguous().to(table[2].dtype), *table,
                                                      n, h, w)
        return (grad_in.to(grad.dtype),) + (None,) * 6


class RoIAlign(nn.Module):
    """``roi_align`` as a module, with ``torchvision.ops.RoIAlign``'s constructor."""

    def __init__(self, output_size: Union[int, tuple[int, int]], spatial_scale: float,
                 sampling_ratio: int, aligned: bool = False):
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned

    def forward(self, input: Tensor, rois: Rois) -> Tensor:
        return roi_align(input, rois, self.output_size, self.spatial_scale, self.sampling_ratio,
                         self.aligned)

    def extra_repr(self) -> str:
        return (f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
                f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}")
