"""On CUDA, roi_pool and roi_align run torchvision's kernels by default (detseg's Triton kernels
measured 0.1-0.4x their speed on an H200); ``set_cuda_kernels`` / ``DETSEG_CUDA_KERNELS`` choose
detseg's. Without a GPU the hand-over is checked by treating CPU tensors as the ones handed
over: the same calls, results and gradients as detseg's own kernels (bit-identical on CPU)."""
import pytest
import torch
import torchvision

from detseg import ops
from detseg.ops import _ext


@pytest.fixture
def choice(monkeypatch):
    monkeypatch.setattr(_ext, "_cuda_kernels", {})
    monkeypatch.delenv("DETSEG_CUDA_KERNELS", raising=False)
    return _ext


def test_the_default_is_torchvision_and_a_setting_chooses_either(choice, monkeypatch):
    assert choice.cuda_kernels("roi_pool") == "torchvision" == choice.cuda_kernels("roi_align")
    monkeypatch.setenv("DETSEG_CUDA_KERNELS", "detseg")
    assert choice.cuda_kernels("roi_align") == "detseg"
    choice.set_cuda_kernels("torchvision", ops=("roi_align",))
    assert choice.cuda_kernels("roi_align") == "torchvision" and choice.cuda_kernels("roi_pool") == "detseg"
    with pytest.raises(ValueError, match="one of"):
        choice.set_cuda_kernels("triton")
    monkeypatch.setenv("DETSEG_CUDA_KERNELS", "fast")
    with pytest.raises(ValueError, match="DETSEG_CUDA_KERNELS"):
        choice.cuda_kernels("roi_pool")
    assert not choice.runs_torchvision(torch.zeros(1), "roi_align")  # CPU tensors: never


def _handed_over(monkeypatch, op):
    """Treat CPU tensors as CUDA ones for ``op``; count torchvision's calls."""
    calls = []
    real = getattr(torchvision.ops, op)

    def counted(*args, **kwargs):
        calls.append(op)
        return real(*args, **kwargs)
    monkeypatch.setattr(torchvision.ops, op, counted)
    monkeypatch.setattr(_ext, "runs_torchvision", lambda t, name: name == op)
    return calls


@pytest.mark.parametrize("op", ["roi_pool", "roi_align"])
def test_the_hand_over_gives_detseg_results_and_gradients(op, monkeypatch):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 12, 14, dtype=torch.float64)
    boxes = [torch.tensor([[1.0, 2.0, 9.5, 10.0], [0.0, 0.0, 30.0, 20.0]], dtype=torch.float64),
             torch.tensor([[3.2, 1.1, 5.0, 4.4]], dtype=torch.float64)]
    call = {"roi_pool": lambda t: ops.roi_pool(t, boxes, (3, 2), 0.5),
            "roi_align": lambda t: ops.roi_align(t, boxes, (3, 2), 0.5, -1, True)}[op]
    own_in = x.clone().requires_grad_()
    own = call(own_in)
    own.sum().backward()
    calls = _handed_over(monkeypatch, op)
    tv_in = x.clone().requires_grad_()
    out = call(tv_in)
    out.sum().backward()
    assert calls == [op]
    torch.testing.assert_close(out, own, rtol=0, atol=1e-12)
    torch.testing.assert_close(tv_in.grad, own_in.grad, rtol=0, atol=1e-12)


def test_spp_pooling_and_export_keep_detseg_kernels(monkeypatch):
    """SPP (several levels, or SPPNet's mapping) has no torchvision kernel; one fast_rcnn level
    is roi_pool and is handed over, in roi_spp_pool's flat layout."""
    x = torch.randn(1, 2, 8, 8)
    rois = torch.tensor([[0, 0.0, 0.0, 7.0, 7.0]])
    calls = _handed_over(monkeypatch, "roi_pool")
    ops.roi_spp_pool(x, rois, (2, 1), 1.0)
    ops.roi_spp_pool(x, rois, (2,), 1.0, mapping="sppnet")
    assert calls == []
    flat = ops.roi_spp_pool(x, rois, (2,), 1.0, mapping="fast_rcnn")
    assert calls == ["roi_pool"] and flat.shape == (1, 2 * 4)
    torch.testing.assert_close(flat, torchvision.ops.roi_pool(x, rois, 2, 1.0).flatten(1))
