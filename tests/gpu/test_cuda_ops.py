"""Triton RoI / SPP pooling and RoIAlign on CUDA against torchvision's CUDA kernels."""
import pytest
import torch
import torchvision

from detseg.ops import backend, roi_align, roi_pool, roi_spp_pool
from tests.ops.test_roi_pool import random_rois

DEV = "cuda"
HALF_TOL = {torch.float16: 1e-2, torch.bfloat16: 5e-2}


def case(seed, dtype=torch.float32, n=2, c=37, h=23, w=31, scale=1 / 8):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g).to(DEV, dtype)
    rois = random_rois(g, 80, n, w / scale, 300 * scale + 10).to(DEV)
    return x, rois


def test_cuda_tensors_run_the_triton_kernels():
    assert backend("cuda", torch.float32) == "triton"


@pytest.mark.parametrize("seed", range(3))
def test_roi_pool_equals_torchvision_cuda_float32(seed):
    x, rois = case(seed)
    x.requires_grad_(True)
    ours = roi_pool(x, rois, 7, 1 / 8)
    ref = torchvision.ops.roi_pool(x, rois, 7, 1 / 8)
    assert torch.equal(ours, ref)
    grad = torch.randn_like(ref)
    (g_ours,) = torch.autograd.grad(ours, x, grad)
    (g_ref,) = torch.autograd.grad(ref, x, grad)
    torch.testing.assert_close(g_ours, g_ref, rtol=0, atol=1e-5)  # atomic adds: any order


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_roi_pool_half_types(dtype):
    x, rois = case(0, dtype)
    x.requires_grad_(True)
    ours = roi_pool(x, rois, 7, 1 / 8)
    assert ours.dtype == dtype
    ref = torchvision.ops.roi_pool(x.detach().float(), rois, 7, 1 / 8)
    assert torch.equal(ours.float(), ref)  # a max of half values is exact
    ours.float().sum().backward()
    assert x.grad.dtype == dtype and torch.isfinite(x.grad.float()).all()


def test_spp_on_cuda_equals_cpu():
    x, rois = case(1)
    cuda = roi_spp_pool(x, rois, (6, 3, 2, 1), 1 / 8)
    cpu = roi_spp_pool(x.cpu(), rois.cpu(), (6, 3, 2, 1), 1 / 8)
    assert torch.equal(cuda.cpu(), cpu)


@pytest.mark.parametrize("aligned,ratio", [(False, 2), (True, -1)])
def test_roi_align_equals_torchvision_cuda(aligned, ratio):
    # torchvision's CUDA kernel lets nvcc fuse its sample-position arithmetic into FMAs, so it
    # differs from torchvision's own CPU kernel by up to ~2e-5 (seen on an H200). detseg's Triton
    # kernel reads the same sample table as its CPU kernel: it is held to torchvision's CPU result
    # at 1e-5 (only its bilinear sums may fuse), and to torchvision's CUDA result at 5e-5.
    x, rois = case(2)
    x.requires_grad_(True)
    ours = roi_align(x, rois, 7, 1 / 8, ratio, aligned)
    ref_cuda = torchvision.ops.roi_align(x, rois, 7, 1 / 8, ratio, aligned)
    x_cpu = x.detach().cpu().requires_grad_(True)
    ref_cpu = torchvision.ops.roi_align(x_cpu, rois.cpu(), 7, 1 / 8, ratio, aligned)
    torch.testing.assert_close(ours.cpu(), ref_cpu, rtol=0, atol=1e-5)
    torch.testing.assert_close(ours, ref_cuda, rtol=0, atol=5e-5)
    grad = torch.randn_like(ref_cuda)
    (g_ours,) = torch.autograd.grad(ours, x, grad)
    (g_cpu,) = torch.autograd.grad(ref_cpu, x_cpu, grad.cpu())
    (g_cuda,) = torch.autograd.grad(ref_cuda, x, grad)
    torch.testing.assert_close(g_ours.cpu(), g_cpu, rtol=0, atol=1e-4)
    torch.testing.assert_close(g_ours, g_cuda, rtol=0, atol=1e-4)


def test_bin_table_on_cuda_equals_cpu():
    # torch divides a CUDA tensor by a Python scalar as a multiply by its reciprocal; the bin
    # table must not, or some RoIs pool a row or column off (caught on an H200).
    from detseg.ops._geometry import bin_table
    _, rois = case(0)
    for mapping in ("fast_rcnn", "sppnet"):
        on_cuda = bin_table(rois[:, 1:], [(7, 7), 6, 3, 2, 1], 1 / 8, mapping, 23, 31)
        on_cpu = bin_table(rois[:, 1:].cpu(), [(7, 7), 6, 3, 2, 1], 1 / 8, mapping, 23, 31)
        assert torch.equal(on_cuda.cpu(), on_cpu)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_roi_align_half_types_within_tolerance(dtype):
    x, rois = case(3, dtype)
    ours = roi_align(x, rois, 7, 1 / 8, 2)
    assert ours.dtype == dtype
    ref = torchvision.ops.roi_align(x.float(), rois, 7, 1 / 8, 2)
    torch.testing.assert_close(ours.float(), ref, rtol=HALF_TOL[dtype], atol=HALF_TOL[dtype])


def test_empty_and_out_of_image_rois():
    x, _ = case(4)
    x.requires_grad_(True)
    outside = torch.tensor([[0, 900.0, 900, 1000, 1000], [1, -300, -300, -200, -200]], device=DEV)
    for fn in (lambda r: roi_pool(x, r, 5, 1 / 8), lambda r: roi_align(x, r, 5, 1 / 8, 2)):
        assert fn(torch.zeros(0, 5, device=DEV)).shape == (0, 37, 5, 5)
        out = fn(outside)
        assert (out == 0).all()
        (g,) = torch.autograd.grad(out.sum(), x)
        assert (g == 0).all()
