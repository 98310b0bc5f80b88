"""On a GPU, roi_pool and roi_align run torchvision's kernels unless detseg's are chosen, and both
choices give the same results (run by tools/gpu_check.sh; skipped without CUDA)."""
import pytest
import torch
import torchvision

from detseg import ops
from detseg.ops import _ext


@pytest.mark.default_cuda_kernels
@pytest.mark.parametrize("op", ["roi_pool", "roi_align"])
def test_default_cuda_kernels_are_torchvisions_and_agree_with_detsegs(op, monkeypatch):
    monkeypatch.setattr(_ext, "_cuda_kernels", {})
    monkeypatch.delenv("DETSEG_CUDA_KERNELS", raising=False)
    torch.manual_seed(0)
    x = torch.randn(2, 16, 40, 48, device="cuda")
    rois = torch.tensor([[0, 1.0, 2.0, 60.0, 70.0], [1, 10.0, 5.0, 33.3, 40.2]], device="cuda")
    ours = getattr(ops, op)
    theirs = getattr(torchvision.ops, op)
    args = (7, 0.5) if op == "roi_pool" else (7, 0.5, 2, True)
    assert _ext.runs_torchvision(x, op)
    default = ours(x, rois, *args)
    torch.testing.assert_close(default, theirs(x, rois, *args), rtol=0, atol=0)
    _ext.set_cuda_kernels("detseg", ops=(op,))
    assert not _ext.runs_torchvision(x, op)
    torch.testing.assert_close(ours(x, rois, *args), default, rtol=1e-5, atol=1e-5)
