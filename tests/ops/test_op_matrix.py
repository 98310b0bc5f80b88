"""The op family through torchvision's own op test matrix (its ``test/test_ops.py`` RoIOpTester
cases, re-expressed here): forward against a float64 oracle in float16 / bfloat16 / float32 /
float64, contiguous or not; gradcheck over seeds; boxes as ``Tensor[K, 5]`` or a list of
``Tensor[L, 4]``; ``torch.fx`` tracing with the op as a leaf (``test_is_leaf_node``,
``test_torch_fx_trace``); plus ``torch.compile`` and ``torch.export``, and the module forms with
torchvision's constructor arguments. Mirrored cases: ``test_forward``, ``test_backward``,
``test_boxes_shape``, ``test_is_leaf_node``, ``test_torch_fx_trace``, ``test_autocast`` (CPU
bfloat16 here). Not mirrored: TorchScript (``test_jit_boxes_list``; detseg ops are
``torch.library`` ops for compile / export instead) and the quantized / MPS cases.
"""
import inspect
from dataclasses import dataclass
from typing import Callable, Optional

import pytest
import torch
import torch.fx
import torchvision

from detseg.ops import (RoIAlign, RoIPool, SpatialPyramidPool, _reference, paste_masks, roi_align,
                        roi_pool, roi_spp_pool)
from detseg.ops._geometry import bin_table


def _spp_oracle(x, rois):
    bins = bin_table(rois[:, 1:].double(), (3, 2, 1), 0.5, "sppnet", x.shape[2], x.shape[3])
    out, _ = _reference.bin_max_pool_forward(x.double(), rois[:, 0].long(), bins)  # one level
    out = out.reshape(len(rois), x.shape[1], 14)  # [K, C, B]: the levels' bins side by side
    return torch.cat([out[:, :, s:e].flatten(1) for s, e in ((0, 9), (9, 13), (13, 14))], 1)


@dataclass
class Case:
    name: str
    fn: Callable  # (x, rois) -> Tensor
    oracle: Callable  # float64 (x, rois) -> Tensor
    module: Optional[Callable] = None  # module form
    distinct: bool = False  # a max op: gradcheck needs distinct values


CASES = [
    Case("roi_pool", lambda x, r: roi_pool(x, r, (3, 2), 0.5),
         lambda x, r: torchvision.ops.roi_pool(x.double(), r.double(), (3, 2), 0.5),
         lambda: RoIPool((3, 2), 0.5), distinct=True),
    Case("roi_spp_pool", lambda x, r: roi_spp_pool(x, r, (3, 2, 1), 0.5), _spp_oracle,
         lambda: SpatialPyramidPool((3, 2, 1), 0.5), distinct=True),
    Case("roi_align", lambda x, r: roi_align(x, r, (3, 2), 0.5, 2),
         lambda x, r: torchvision.ops.roi_align(x.double(), r.double(), (3, 2), 0.5, 2),
         lambda: RoIAlign((3, 2), 0.5, 2)),
    Case("roi_align_aligned_adaptive", lambda x, r: roi_align(x, r, 3, 0.5, -1, True),
         lambda x, r: torchvision.ops.roi_align(x.double(), r.double(), 3, 0.5, -1, True),
         lambda: RoIAlign(3, 0.5, -1, True)),
]
IDS = [c.name for c in CASES]
TOL = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2, torch.float32: 1e-5, torch.float64: 1e-10}


def inputs(seed=0, dtype=torch.float32, contiguous=True, distinct=False):
    g = torch.Generator().manual_seed(seed)
    if distinct:
        x = (torch.randperm(2 * 10 * 10 * 3, generator=g).double() / 97).reshape(2, 10, 10, 3)
    else:
        x = torch.rand(2, 10, 10, 3, generator=g, dtype=torch.float64) * 4 - 2
    x = x.permute(0, 3, 1, 2)  # non-contiguous view of a channels-last buffer
    x = (x.contiguous() if contiguous else x).to(dtype)
    rois = torch.tensor([[0, 0, 0, 9, 9], [0, 0, 5, 4, 9], [0, 5, 5, 9, 9], [1, 0, 0, 9, 9],
                         [1, 3.3, 1.7, 16.1, 12.4], [0, -4, 2, 6, 30]], dtype=torch.float64) * 2
    rois[:, 0] /= 2
    return x, rois


def check_forward(case, dtype, contiguous, device="cpu"):
    """The op on ``device`` against the float64 oracle (on the CPU) of x's own rounded values."""
    x, rois = inputs(dtype=dtype, contiguous=contiguous)
    expected = case.oracle(x, rois)
    rois = rois.to(dtype if dtype in (torch.float32, torch.float64) else torch.float32)
    x, rois = x.to(device), rois.to(device)
    assert x.is_contiguous() == contiguous
    out = case.fn(x, rois)
    assert out.device.type == torch.device(device).type and out.dtype == dtype
    tol = TOL[dtype]
    torch.testing.assert_close(out.cpu().double(), expected.reshape(out.shape), rtol=tol, atol=tol)


def check_gradcheck(case, seed, contiguous, device="cpu"):
    x, rois = inputs(seed, torch.float64, contiguous, distinct=case.distinct)
    x, rois = x.to(device).requires_grad_(True), rois.to(device)
    assert torch.autograd.gradcheck(lambda t: case.fn(t, rois), (x,))


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("contiguous", [True, False])
def test_forward_against_float64_oracle(case, dtype, contiguous):
    check_forward(case, dtype, contiguous)


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("contiguous", [True, False])
def test_gradcheck(case, seed, contiguous):
    check_gradcheck(case, seed, contiguous)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_boxes_as_tensor_or_list(case):
    x, rois = inputs()
    rois = rois.float()
    as_list = [rois[rois[:, 0] == i, 1:] for i in range(2)]
    order = torch.argsort(rois[:, 0], stable=True)
    assert torch.equal(case.fn(x, as_list), case.fn(x, rois[order]))
    for bad in (rois[:, 1:], [rois], [rois[:, 1:3]]):
        with pytest.raises(ValueError, match="Tensor"):
            case.fn(x, bad)


class Direct(torch.nn.Module):
    """Calls the function itself (torchvision's ops fail fx tracing this way)."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x, rois):
        return self.fn(x, rois) * 2


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("form", ["function", "module"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_fx_trace_keeps_the_op_as_a_leaf(case, form, dtype):
    net = Direct(case.fn) if form == "function" else case.module()
    traced = torch.fx.symbolic_trace(net)
    leaves = [n for n in traced.graph.nodes if n.op == "call_function"
              and getattr(n.target, "__module__", "").startswith("detseg.ops")]
    assert len(leaves) == 1
    x, rois = inputs(dtype=dtype)
    assert torch.equal(traced(x, rois.float()), net(x, rois.float()))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_compile_and_export(case):
    x, rois = inputs()
    rois = rois.float()
    net = Direct(case.fn)
    exported = torch.export.export(net, (x, rois))
    assert "torch.ops.detseg." in exported.graph_module.code
    assert torch.equal(exported.module()(x, rois), net(x, rois))
    compiled = torch.compile(net, backend="aot_eager", fullgraph=True)
    xg = x.clone().requires_grad_(True)
    xe = x.clone().requires_grad_(True)
    out_c, out_e = compiled(xg, rois), net(xe, rois)
    assert torch.equal(out_c, out_e)
    out_c.sum().backward()
    out_e.sum().backward()
    assert torch.equal(xg.grad, xe.grad)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_cpu_autocast_bfloat16(case):
    x, rois = inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = case.fn(torch.nn.functional.conv2d(x, torch.eye(3)[:, :, None, None]), rois.float())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.double(), case.oracle(x, rois).reshape(out.shape), rtol=0.05, atol=0.05)


def test_module_constructors_take_torchvisions_arguments():
    for ours, theirs in ((RoIAlign, torchvision.ops.RoIAlign), (RoIPool, torchvision.ops.RoIPool)):
        assert list(inspect.signature(ours).parameters) == list(inspect.signature(theirs).parameters)
    m = RoIAlign(output_size=(7, 7), spatial_scale=0.25, sampling_ratio=2, aligned=True)
    assert (m.output_size, m.spatial_scale, m.sampling_ratio, m.aligned) == ((7, 7), 0.25, 2, True)


# paste_masks: not a pooling op, so its own rows of the matrix (no gradient; torchvision's
# paste_masks_in_image is the peer, compared in test_paste_masks.py).
def _paste_inputs(dtype, contiguous):
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(5, 28, 28, generator=g, dtype=torch.float64)
    masks = masks if contiguous else masks.transpose(1, 2).contiguous().transpose(1, 2)
    boxes = torch.tensor([[3, 4, 40, 30], [0, 0, 63, 47], [-10, 5, 20, 60], [30, 30, 31, 31],
                          [10.5, 2.2, 50.7, 20.9]])
    return masks.to(dtype), boxes


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("contiguous", [True, False])
def test_paste_masks_dtypes_and_layouts(dtype, contiguous):
    masks, boxes = _paste_inputs(dtype, contiguous)
    out = paste_masks(masks, boxes, (48, 64), threshold=None)
    expected = paste_masks(masks.float().contiguous(), boxes, (48, 64), threshold=None)
    assert out.shape == (5, 48, 64)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)  # computed in float32 either way


def test_paste_masks_fx_compile_export():
    masks, boxes = _paste_inputs(torch.float32, True)
    traced = torch.fx.symbolic_trace(Direct(paste_masks_48x64))
    assert any(n.op == "call_function" and n.target is paste_masks for n in traced.graph.nodes)
    eager = paste_masks(masks, boxes, (48, 64))
    assert torch.equal(traced(masks, boxes), eager * 2)
    compiled = torch.compile(paste_masks_48x64, backend="aot_eager", fullgraph=True)
    assert torch.equal(compiled(masks, boxes), eager)
    exported = torch.export.export(PasteNet(), (masks, boxes))
    assert "torch.ops.detseg.paste_masks" in exported.graph_module.code
    assert torch.equal(exported.module()(masks, boxes), eager)


def paste_masks_48x64(masks, boxes):
    return paste_masks(masks, boxes, (48, 64))


class PasteNet(torch.nn.Module):
    def forward(self, masks, boxes):
        return paste_masks(masks, boxes, (48, 64))
