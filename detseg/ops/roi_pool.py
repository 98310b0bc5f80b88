"""RoI pooling and spatial-pyramid pooling: public API, autograd, device dispatch.

Two ``torch.library`` ops carry the work: ``detseg::bin_max_pool`` (forward) and
``detseg::bin_max_pool_backward``. Each picks a kernel by device: Triton for CUDA tensors, the C++
extension on CPU (JIT-built, cached), the pure-PyTorch reference otherwise. Both have fake
(shape-only) implementations, so ``torch.compile`` and ``torch.export`` trace through them. The
bin geometry comes from ``_geometry.bin_table``, shared by all kernels.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor, nn

from . import _reference
from . import _ext
from ._ext import backend, compute_dtype, load_extension
from ._fx import fx_leaf
from ._geometry import MAPPINGS, bin_table, roi_windows, window_bins
from ._rois import pair, roi_tensor

Level = Union[int, tuple[int, int]]


def _kernel_for(t: Tensor) -> str:
    kind = backend(t.device, t.dtype)
    # The C++ kernel is compiled for float32 / float64; other dtypes reach it upcast by _pool.
    return "reference" if kind == "cpp" and compute_dtype(t.dtype) != t.dtype else kind


@torch.library.custom_op("detseg::bin_max_pool", mutates_args=())
def bin_max_pool(input: Tensor, batch_idx: Tensor, bins: Tensor, with_argmax: bool = True,
                 level_bins: Optional[list[int]] = None) -> tuple[Tensor, Tensor]:
    """Max over each bin of ``bins`` (``int32 [K, B, 4]``).

    ``level_bins`` (bins per pyramid level, summing to B; None: one level) sets the output's
    layout: ``[K, C * B]`` holding, level after level, that level's ``[C, B_level]`` block. That is
    SPPNet's flattened, concatenated pyramid, written by the kernel itself, so the caller needs no
    slicing and concatenating (whose backward allocated a zero-filled copy of the output per
    level); with one level it is ``[K, C, B]``.

    Returns:
        (``[K, C * B]``, argmax ``int32 [K, C * B]`` in the same layout); the C++ kernel skips the
        argmax (returns ``[0, C * B]``) when ``with_argmax`` is False, i.e. when no gradient is
        wanted.
    """
    levels = _levels(level_bins, bins)
    kind = _kernel_for(input)
    if kind == "triton":
        from . import roi_pool_triton
        return roi_pool_triton.bin_max_pool_forward(input, batch_idx, bins, levels)
    if kind == "cpp":
        out, arg = load_extension().forward(input, batch_idx, bins, with_argmax, levels)
        return out, arg
    return _reference.bin_max_pool_forward(input, batch_idx, bins, levels)


def _levels(level_bins: Optional[list[int]], bins: Tensor) -> list[int]:
    if level_bins is None:
        return [bins.shape[1]]
    if sum(level_bins) != bins.shape[1] or any(n <= 0 for n in level_bins):
        raise ValueError(f"level_bins {level_bins} must be positive and sum to the bin table's "
                         f"{bins.shape[1]} bins")
    return list(level_bins)


@bin_max_pool.register_fake
def _(input, batch_idx, bins, with_argmax=True, level_bins=None):
    k, b = bins.shape[0], bins.shape[1]
    c = input.shape[1]
    return input.new_empty((k, c * b)), input.new_empty((k, c * b), dtype=torch.int32)


@torch.library.custom_op("detseg::bin_max_pool_backward", mutates_args=())
def bin_max_pool_backward(grad: Tensor, argmax: Tensor, batch_idx: Tensor, n: int, h: int,
                          w: int, level_bins: list[int]) -> Tensor:
    """Gradient of ``bin_max_pool``: each bin's gradient added at its argmax → ``[N, C, H, W]``.

    ``grad`` and ``argmax`` are ``[K, C * B]`` in the forward's layout for ``level_bins``.
    """
    kind = _kernel_for(grad)
    if kind == "triton":
        from . import roi_pool_triton
        return roi_pool_triton.bin_max_pool_backward(grad, argmax, batch_idx, n, h, w, level_bins)
    if kind == "cpp":
        return load_extension().backward(grad, argmax, batch_idx, n, h, w, level_bins)
    return _reference.bin_max_pool_backward(grad, argmax, batch_idx, n, h, w, level_bins)


@bin_max_pool_backward.register_fake
def _(grad, argmax, batch_idx, n, h, w, level_bins):
    return grad.new_empty((n, grad.shape[1] // sum(level_bins), h, w))


def _setup_context(ctx, inputs, output):
    input, batch_idx, bins, _, level_bins = inputs
    ctx.save_for_backward(output[1], batch_idx)
    ctx.input_shape = (input.shape[0], input.shape[2], input.shape[3])
    ctx.level_bins = _levels(level_bins, bins)
    ctx.mark_non_differentiable(output[1])
    # Otherwise autograd hands backward a zero-filled tensor as the argmax's "gradient": a fresh
    # int32 [K, C * B], as large as the output (25 MB for 512 RoIs of 256 channels), every step.
    ctx.set_materialize_grads(False)


def _backward(ctx, grad_out, _grad_argmax):
    if grad_out is None:  # the pooled output took no part in the loss
        return None, None, None, None, None
    argmax, batch_idx = ctx.saved_tensors
    n, h, w = ctx.input_shape
    if argmax.shape[0] != grad_out.shape[0]:
        raise RuntimeError("bin_max_pool was run with with_argmax=False; it has no gradient")
    grad_in = bin_max_pool_backward(grad_out.contiguous(), argmax, batch_idx, n, h, w, ctx.level_bins)
    return grad_in, None, None, None, None


bin_max_pool.register_autograd(_backward, setup_context=_setup_context)


@torch.library.custom_op("detseg::window_max_pool", mutates_args=())
def window_max_pool(input: Tensor, windows: Tensor, level_sizes: list[int]) -> Tensor:
    """Max pooling as exported graphs hold it: ``[K, C * B]`` like ``bin_max_pool`` (its levels
    are ``level_sizes``' levels), from ``windows [K, 5]`` (batch index, then ``roi_windows``'
    inclusive feature-map window) and the levels' ``(rows, cols)`` flattened into ``level_sizes``.

    Its bins are ONNX ``MaxRoiPool``'s with ``spatial_scale=1`` on these windows (same rounding),
    so it exports as one ``MaxRoiPool`` per level, whichever mapping made the windows. Made for
    inference; its gradient recomputes the argmax, so a graph that reaches it while training
    (torch 2.11's ``torch.compile`` after a ``torch.export`` in the same process saw
    ``is_exporting()`` true) still learns.
    """
    out, _ = _window_pool(input, windows, level_sizes, with_argmax=False)
    return out


def _window_pool(input: Tensor, windows: Tensor, level_sizes: list[int], with_argmax: bool):
    """``bin_max_pool`` over the bins of ``windows``; also ``(batch_idx, level_bins)``."""
    sizes = list(zip(level_sizes[::2], level_sizes[1::2]))
    bins = window_bins(windows[:, 1:], sizes, input.shape[2], input.shape[3])
    batch_idx, level_bins = windows[:, 0].long(), [h * w for h, w in sizes]
    out, arg = bin_max_pool(input, batch_idx, bins, with_argmax, level_bins)
    return out, (arg, batch_idx, level_bins)


@window_max_pool.register_fake
def _(input, windows, level_sizes):
    bins = sum(h * w for h, w in zip(level_sizes[::2], level_sizes[1::2]))
    return input.new_empty((windows.shape[0], input.shape[1] * bins))


def _window_setup_context(ctx, inputs, output):
    input, windows, level_sizes = inputs
    # The input, not an argmax: the forward skipped the argmax, and this path is rare enough
    # that recomputing it in the backward beats making every exported forward store one.
    ctx.save_for_backward(input, windows)
    ctx.level_sizes = list(level_sizes)
    ctx.set_materialize_grads(False)


def _window_backward(ctx, grad_out):
    if grad_out is None:
        return None, None, None
    input, windows = ctx.saved_tensors
    _, (argmax, batch_idx, level_bins) = _window_pool(input, windows, ctx.level_sizes, True)
    n, _, h, w = input.shape
    grad_in = bin_max_pool_backward(grad_out.contiguous(), argmax, batch_idx, n, h, w, level_bins)
    return grad_in, None, None


window_max_pool.register_autograd(_window_backward, setup_context=_window_setup_context)


# --------------------------------------------------------------------------- public API


def _level_sizes(levels: Sequence[Level]) -> list[tuple[int, int]]:
    sizes = [pair(lvl, "pyramid levels") for lvl in levels]
    if not sizes:
        raise ValueError("levels must name at least one pyramid level")
    return sizes


def _pool(input: Tensor, rois, levels: list[tuple[int, int]], spatial_scale: float,
          mapping: str) -> Tensor:
    """``[K, C * B]``: each level's ``[K, C, h, w]`` pooling, flattened, levels concatenated."""
    if input.dim() != 4:
        raise ValueError(f"input must be Tensor[N, C, H, W], got shape {tuple(input.shape)}")
    if mapping not in MAPPINGS:
        raise ValueError(f"mapping must be one of {MAPPINGS}, got {mapping!r}")
    geo_dtype = compute_dtype(input.dtype)
    if input.dtype != geo_dtype and input.device.type != "cuda":
        # float16 / bfloat16 off the GPU: a max is exact in float32, so pool there and cast back.
        return _pool(input.to(geo_dtype), rois, levels, spatial_scale, mapping).to(input.dtype)
    rois = roi_tensor(rois, geo_dtype, input.device)
    if len(levels) == 1 and mapping == "fast_rcnn" and _ext.runs_torchvision(input, "roi_pool"):
        import torchvision  # the same op (torchvision's bins), its CUDA kernel: see _ext.cuda_kernels
        return torchvision.ops.roi_pool(input, rois.to(input.dtype), levels[0], spatial_scale).flatten(1)
    if torch.compiler.is_exporting():
        windows = torch.cat([rois[:, :1], roi_windows(rois[:, 1:], spatial_scale, mapping)], dim=1)
        return window_max_pool(input, windows, [v for size in levels for v in size])
    level_bins = [h * w for h, w in levels]
    # The argmax is only needed for the backward pass; inference skips it.
    with_argmax = input.requires_grad and torch.is_grad_enabled()
    eager_cpu = input.device.type == "cpu" and not torch.compiler.is_compiling()
    ext = load_extension() if eager_cpu else None
    if ext is not None:
        # Eager on the CPU: the bin table in one C++ call (bit-equal to _geometry's,
        # tests/ops/test_bin_table.py) and the kernel called without the custom op's dispatch,
        # which cost several times the whole of torchvision's call with few RoIs. Compiled and
        # exported graphs keep the custom ops (the same kernels).
        batch_idx, bins = ext.roi_bins(rois, [v for size in levels for v in size], float(spatial_scale),
                                       mapping == "sppnet", input.shape[2], input.shape[3])
        if not with_argmax:
            return ext.forward(input, batch_idx, bins, False, level_bins)[0]
        return _EagerBinMaxPool.apply(input, batch_idx, bins, level_bins)
    batch_idx, boxes = rois[:, 0].long(), rois[:, 1:]
    bins = bin_table(boxes, levels, spatial_scale, mapping, input.shape[2], input.shape[3])
    out, _ = bin_max_pool(input, batch_idx, bins, with_argmax, level_bins)
    return out


class _EagerBinMaxPool(torch.autograd.Function):
    """``bin_max_pool`` with its gradient for eager CPU calls: the C++ kernels of the custom ops
    (``detseg::bin_max_pool``, ``detseg::bin_max_pool_backward``) without their dispatch."""

    @staticmethod
    def forward(ctx, input: Tensor, batch_idx: Tensor, bins: Tensor, level_bins: list[int]) -> Tensor:
        out, argmax = load_extension().forward(input, batch_idx, bins, True, level_bins)
        ctx.save_for_backward(argmax, batch_idx)
        ctx.input_shape = (input.shape[0], input.shape[2], input.shape[3])
        ctx.level_bins = level_bins
        ctx.set_materialize_grads(False)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        if grad_out is None:
            return None, None, None, None
        argmax, batch_idx = ctx.saved_tensors
        n, h, w = ctx.input_shape
        grad_in = load_extension().backward(grad_out.contiguous(), argmax, batch_idx, n, h, w,
                                            ctx.level_bins)
        return grad_in, None, None, None


@fx_leaf
def roi_pool(input: Tensor, rois: Union[Tensor, Sequence[Tensor]],
             output_size: Union[int, tuple[int, int]], spatial_scale: float = 1.0) -> Tensor:
    """Fast R-CNN RoI max pooling; same call and result as ``torchvision.ops.roi_pool``.

    Args:
        input: ``Tensor[N, C, H, W]`` feature map.
        rois: ``Tensor[K, 5]`` (batch index, x1, y1, x2, y2) or a list of ``Tensor[L, 4]``.
        output_size: ``int`` or ``(h, w)``.
        spatial_scale: feature-map size / image size.

    Returns:
        ``Tensor[K, C, h, w]``.
    """
    oh, ow = pair(output_size)
    out = _pool(input, rois, [(oh, ow)], spatial_scale, "fast_rcnn")
    return out.reshape(out.shape[0], input.shape[1], oh, ow)


@fx_leaf
def roi_spp_pool(input: Tensor, rois: Union[Tensor, Sequence[Tensor]],
                 levels: Sequence[Level] = (6, 3, 2, 1), spatial_scale: float = 1.0,
                 mapping: str = "sppnet") -> Tensor:
    """Spatial-pyramid max pooling of every RoI at every level, in one call.

    Args:
        input: ``Tensor[N, C, H, W]``.
        rois: ``Tensor[K, 5]`` or a list of ``Tensor[L, 4]``, image coordinates.
        levels: pyramid sizes; ``(7,)`` with ``mapping="fast_rcnn"`` is Fast R-CNN's RoI pooling.
        spatial_scale: 1 / feature stride.
        mapping: ``"sppnet"`` (He et al., appendix) or ``"fast_rcnn"`` (torchvision's rounding).

    Returns:
        ``Tensor[K, C * sum(l * l)]``: the per-level ``[K, C, l, l]`` outputs, each flattened,
        concatenated in level order.
    """
    return _pool(input, rois, _level_sizes(levels), spatial_scale, mapping)


class RoIPool(nn.Module):
    """``roi_pool`` as a module (Fast R-CNN)."""

    def __init__(self, output_size: Union[int, tuple[int, int]], spatial_scale: float):
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale

    def forward(self, input: Tensor, rois) -> Tensor:
        return roi_pool(input, rois, self.output_size, self.spatial_scale)

    def extra_repr(self) -> str:
        return (f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
                f"backend={backend('cpu')!r} on CPU")


class SpatialPyramidPool(nn.Module):
    """``roi_spp_pool`` as a module (SPPNet); ``out_features(C)`` gives the output width."""

    def __init__(self, levels: Sequence[Level] = (6, 3, 2, 1), spatial_scale: float = 1 / 16,
                 mapping: str = "sppnet"):
        super().__init__()
        if mapping not in MAPPINGS:
            raise ValueError(f"mapping must be one of {MAPPINGS}, got {mapping!r}")
        self.levels = tuple(levels)
        self.sizes = _level_sizes(self.levels)
        self.spatial_scale = spatial_scale
        self.mapping = mapping

    def out_features(self, channels: int) -> int:
        return channels * sum(h * w for h, w in self.sizes)

    def forward(self, input: Tensor, rois) -> Tensor:
        return roi_spp_pool(input, rois, self.levels, self.spatial_scale, self.mapping)

    def extra_repr(self) -> str:
        return (f"levels={self.levels}, spatial_scale={self.spatial_scale}, "
                f"mapping={self.mapping!r}, bins={sum(h * w for h, w in self.sizes)}")
