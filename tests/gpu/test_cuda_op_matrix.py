"""The op matrix of ``tests/ops/test_op_matrix.py`` again with CUDA tensors (the Triton kernels), as
torchvision's ``test/test_ops.py`` runs its cases on both devices: forward against the float64
oracle in every dtype and layout, gradcheck, boxes as tensor or list, compile and export, and
paste_masks' dtypes. The oracle and the expected values are computed on the CPU."""
import pytest
import torch

from detseg.ops import paste_masks
from tests.ops.test_op_matrix import CASES, IDS, Direct, _paste_inputs, check_forward, check_gradcheck, inputs

DEV = "cuda"


def on_cuda(x, rois):
    return x.to(DEV), rois.to(DEV)


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("contiguous", [True, False])
def test_forward_against_float64_oracle_cuda(case, dtype, contiguous):
    check_forward(case, dtype, contiguous, DEV)


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("seed", [0, 1])
def test_gradcheck_cuda(case, seed):
    check_gradcheck(case, seed, True, DEV)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_cuda_equals_cpu_kernel(case):
    x, rois = inputs()
    rois = rois.float()
    cpu = case.fn(x, rois)
    cuda = case.fn(*on_cuda(x, rois)).cpu()
    torch.testing.assert_close(cuda, cpu, rtol=0, atol=1e-5)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_boxes_as_list_cuda(case):
    x, rois = on_cuda(*inputs())
    rois = rois.float()
    as_list = [rois[rois[:, 0] == i, 1:] for i in range(2)]
    order = torch.argsort(rois[:, 0], stable=True)
    assert torch.equal(case.fn(x, as_list), case.fn(x, rois[order]))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_compile_and_export_cuda(case):
    x, rois = on_cuda(*inputs())
    rois = rois.float()
    net = Direct(case.fn)
    exported = torch.export.export(net, (x, rois))
    assert torch.equal(exported.module()(x, rois), net(x, rois))
    compiled = torch.compile(net, backend="aot_eager", fullgraph=True)
    xg = x.clone().requires_grad_(True)
    out = compiled(xg, rois)
    torch.testing.assert_close(out, net(x, rois), rtol=0, atol=0)
    out.sum().backward()
    assert xg.grad is not None and xg.grad.device.type == "cuda"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_paste_masks_cuda(dtype):
    masks, boxes = _paste_inputs(dtype, True)
    out = paste_masks(masks.to(DEV), boxes.to(DEV), (48, 64), threshold=None)
    expected = paste_masks(masks.float(), boxes, (48, 64), threshold=None)
    assert out.device.type == "cuda" and out.shape == (5, 48, 64)
    torch.testing.assert_close(out.cpu(), expected, rtol=0, atol=1e-5)
