"""The Triton (CUDA-path) kernels, run on the CPU by Triton's interpreter: RoI / SPP pooling
against the reference, RoIAlign against torchvision."""
import subprocess
import sys

import pytest

from tests.conftest import ROOT, script_env

pytest.importorskip("triton")

CHECK = r"""
import torch
from detseg.ops import _reference, roi_pool_triton
from detseg.ops._geometry import bin_table
g = torch.Generator().manual_seed(0)
for dtype in (torch.float32, torch.float64):
    for mapping in ("fast_rcnn", "sppnet"):
        x = torch.randn(2, 37, 11, 14, generator=g, dtype=dtype)
        xy = torch.rand(25, 2, generator=g) * 260 - 30
        boxes = torch.cat([xy, xy + torch.rand(25, 2, generator=g) * 150], 1).to(dtype)
        boxes[0] = boxes[0, [2, 3, 0, 1]]
        batch = torch.randint(0, 2, (25,), generator=g)
        bins = bin_table(boxes, (3, 2, 1), 1 / 16, mapping, 11, 14)
        ro, ra = _reference.bin_max_pool_forward(x, batch, bins, [9, 4, 1])
        to, ta = roi_pool_triton.bin_max_pool_forward(x, batch, bins, [9, 4, 1])
        assert torch.equal(ro, to), (dtype, mapping, (ro - to).abs().max())
        assert torch.equal(ra, ta), (dtype, mapping)
        grad = torch.randn(ro.shape, generator=g, dtype=dtype)
        rg = _reference.bin_max_pool_backward(grad, ra, batch, 2, 11, 14, [9, 4, 1])
        tg = roi_pool_triton.bin_max_pool_backward(grad, ta, batch, 2, 11, 14, [9, 4, 1])
        torch.testing.assert_close(tg, rg, rtol=1e-6, atol=1e-6)
empty = roi_pool_triton.bin_max_pool_forward(torch.randn(1, 3, 4, 4), torch.zeros(0, dtype=torch.long),
                                             torch.zeros(0, 4, 4, dtype=torch.int32), [4])
assert empty[0].shape == (0, 12)

# RoIAlign: the Triton kernels against torchvision (forward bit-equal: same order of additions;
# backward within 1e-5, its atomic adds land in any order).
import torchvision
from detseg.ops import roi_align_triton
from detseg.ops.roi_align import _table
for dtype in (torch.float32, torch.float64):
    for aligned, ratio in ((False, 2), (True, -1)):
        x = torch.randn(2, 19, 11, 14, generator=g, dtype=dtype)
        xy = torch.rand(12, 2, generator=g) * 260 - 30
        boxes = torch.cat([xy, xy + torch.rand(12, 2, generator=g) * 150], 1)
        boxes[0] = boxes[0, [2, 3, 0, 1]]
        rois = torch.cat([torch.randint(0, 2, (12, 1), generator=g).float(), boxes], 1).to(dtype)
        batch, table = _table(rois, dtype, 3, 2, 1 / 16, ratio, aligned, 11, 14)
        out = roi_align_triton.roi_align_forward(x, batch, *table)
        xr = x.clone().requires_grad_(True)
        ref = torchvision.ops.roi_align(xr, rois, (3, 2), 1 / 16, ratio, aligned)
        assert torch.equal(out, ref.detach()), (dtype, aligned, (out - ref).abs().max())
        grad = torch.randn(ref.shape, generator=g, dtype=dtype)
        (g_ref,) = torch.autograd.grad(ref, xr, grad)
        g_tri = roi_align_triton.roi_align_backward(grad, batch, *table, 2, 11, 14)
        torch.testing.assert_close(g_tri, g_ref, rtol=0, atol=1e-5)
print("TRITON-OK")
"""


def test_triton_kernels_match_under_interpreter():
    env = script_env(TRITON_INTERPRET="1")
    r = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, env=env,
                       timeout=600, cwd=ROOT)
    assert r.returncode == 0 and "TRITON-OK" in r.stdout, r.stderr[-3000:]
