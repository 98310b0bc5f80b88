"""RoIAlign against torchvision, a naive float64 oracle written from the paper's definition, and
its FPN pooler against torchvision's MultiScaleRoIAlign."""
import math

import pytest
import torch
import torchvision

from detseg.ops import MultiScaleRoIAlign, RoIAlign, backend, roi_align
from detseg.ops._geometry import sample_table
from tests.ops.test_roi_pool import random_rois

EXACT = backend("cpu") == "cpp"  # the C++ kernel adds in torchvision's order: bit-equal results


def naive_roi_align(x, rois, size, scale, ratio, aligned):
    """One bilinear sample at a time, in float64 Python (tiny inputs only)."""
    x = x.double()
    n, c, h, w = x.shape
    ph, pw = size
    out = torch.zeros(len(rois), c, ph, pw, dtype=torch.float64)

    def bilinear(img, y, xx):
        if y < -1.0 or y > h or xx < -1.0 or xx > w:
            return torch.zeros(c, dtype=torch.float64)
        y, xx = max(y, 0.0), max(xx, 0.0)
        y0, x0 = min(int(y), h - 1), min(int(xx), w - 1)
        y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
        y, xx = (float(y0) if y0 == h - 1 else y), (float(x0) if x0 == w - 1 else xx)
        ly, lx = y - y0, xx - x0
        return ((1 - ly) * (1 - lx) * img[:, y0, x0] + (1 - ly) * lx * img[:, y0, x1]
                + ly * (1 - lx) * img[:, y1, x0] + ly * lx * img[:, y1, x1])

    off = 0.5 if aligned else 0.0
    for k, (b, x1, y1, x2, y2) in enumerate(rois.double().tolist()):
        sx, sy = x1 * scale - off, y1 * scale - off
        rw, rh = x2 * scale - off - sx, y2 * scale - off - sy
        if not aligned:
            rw, rh = max(rw, 1.0), max(rh, 1.0)
        bh, bw = rh / ph, rw / pw
        gh = ratio if ratio > 0 else math.ceil(rh / ph)
        gw = ratio if ratio > 0 else math.ceil(rw / pw)
        for i in range(ph):
            for j in range(pw):
                acc = torch.zeros(c, dtype=torch.float64)
                for iy in range(max(gh, 0)):
                    for ix in range(max(gw, 0)):
                        acc += bilinear(x[int(b)], sy + i * bh + (iy + 0.5) * bh / gh,
                                        sx + j * bw + (ix + 0.5) * bw / gw)
                out[k, :, i, j] = acc / max(gh * gw, 1)
    return out


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("ratio", [-1, 2])
def test_equals_naive_float64_oracle(aligned, ratio):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 7, 9, generator=g, dtype=torch.float64)
    rois = random_rois(g, 12, 2, 9 / 0.5, 14).double()
    ours = roi_align(x, rois, (3, 2), 0.5, ratio, aligned)
    torch.testing.assert_close(ours, naive_roi_align(x, rois, (3, 2), 0.5, ratio, aligned),
                               rtol=0, atol=1e-10)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("aligned", [False, True])
def test_equals_torchvision_forward_and_backward(seed, dtype, aligned):
    g = torch.Generator().manual_seed(seed)
    n, c, h, w = 2, 6, 11 + seed, 15
    x = torch.randn(n, c, h, w, generator=g, dtype=dtype)
    if seed % 2:  # non-contiguous input
        x = torch.randn(n, h, w, c, generator=g, dtype=dtype).permute(0, 3, 1, 2)
    x.requires_grad_(True)
    scale = [1 / 16, 0.25, 0.5, 1.0][seed]
    ratio = [-1, 2, 0, 3][seed]
    size = [7, (3, 5), 1, (6, 4)][seed]
    rois = random_rois(g, 50, n, w / scale, 150 * scale + 10).to(dtype)
    ours = roi_align(x, rois, size, scale, ratio, aligned)
    ref = torchvision.ops.roi_align(x, rois, size, scale, ratio, aligned)
    grad = torch.randn(ref.shape, generator=g, dtype=dtype)
    (g_ours,) = torch.autograd.grad(ours, x, grad)
    (g_ref,) = torch.autograd.grad(ref, x, grad)
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(ours, ref, rtol=0, atol=tol)
    # Gradient sums may be added in another order on the reference backend (index_put_).
    torch.testing.assert_close(g_ours, g_ref, rtol=0, atol=1e-4 if dtype == torch.float32 else 1e-10)
    if EXACT:
        assert torch.equal(ours, ref) and torch.equal(g_ours, g_ref)


def test_edge_cases_match_torchvision():
    x = torch.randn(1, 2, 6, 8, requires_grad=True)
    rois = torch.tensor([
        [0, 1.0, 1, 5, 4],       # inside
        [0, 3, 3, 3, 3],         # zero size
        [0, 6, 5, 1, 2],         # inverted
        [0, -40, -40, -20, -20],  # wholly outside (above-left)
        [0, 50, 50, 90, 70],     # wholly outside (below-right)
        [0, -3, -2, 12, 9],      # larger than the map
        [0, 7.9, 5.9, 8.5, 6.5],  # on the far edge
    ])
    for aligned in (False, True):
        for ratio in (-1, 2):
            ours = roi_align(x, rois, 3, 1.0, ratio, aligned)
            ref = torchvision.ops.roi_align(x, rois, 3, 1.0, ratio, aligned)
            torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)
            gx = torch.autograd.grad(ours.sum(), x)[0]
            gr = torch.autograd.grad(ref.sum(), x)[0]
            torch.testing.assert_close(gx, gr, rtol=0, atol=1e-6)
    assert (roi_align(x, rois[3:5], 3, 1.0, 2) == 0).all()  # outside the map: zeros
    empty = roi_align(x, torch.zeros(0, 5), 4)
    assert empty.shape == (0, 2, 4, 4)
    empty.sum().backward()
    assert (x.grad == 0).all()


def test_sample_table_marks_samples_outside_or_beyond_the_grid():
    rois = torch.tensor([[0, 0.0, 0, 8, 8], [0, -30, 0, -20, 2]])
    yi, yw, xi, xw, grid = sample_table(rois, (2, 2), 1.0, -1, False, 8, 8)
    assert grid.tolist() == [[4, 4], [1, 5]]  # adaptive: ceil(size / 2) per axis
    assert yi.shape == (2, 2, 4, 2) and xi.shape == (2, 2, 5, 2)
    assert (xi[1, :, :, 0] == -1).all()  # second RoI is left of the map: every column dropped
    assert (yi[1, :, 1:, 0] == -1).all()  # beyond its 1-sample row grid
    torch.testing.assert_close(yw.sum(-1)[yi[..., 0] >= 0], torch.ones(int((yi[..., 0] >= 0).sum())))


def test_gradcheck_float64():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 7, 8, generator=g, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0, 0.5, 0.3, 6.2, 5.1], [1, 2, 1, 9, 7.5], [0, -2, -1, 3, 3], [1, 4, 4, 4, 4]],
                        dtype=torch.float64)
    for aligned in (False, True):
        assert torch.autograd.gradcheck(lambda t: roi_align(t, rois, (3, 2), 0.9, -1, aligned), (x,))
        assert torch.autograd.gradcheck(lambda t: roi_align(t, rois, 2, 1.0, 2, aligned), (x,))


@pytest.mark.parametrize("names", [["p3"], ["p2", "p3", "p4", "p5"]])
def test_multiscale_pooler_equals_torchvisions(names):
    g = torch.Generator().manual_seed(1)
    strides = {"p2": 4, "p3": 8, "p4": 16, "p5": 32}
    feats = {k: torch.randn(2, 4, 256 // s, 320 // s, generator=g, requires_grad=True)
             for k, s in strides.items()}
    sizes = [(250, 320), (256, 300)]
    boxes = []
    for _ in sizes:
        xy = torch.rand(30, 2, generator=g) * 200
        boxes.append(torch.cat([xy, xy + torch.rand(30, 2, generator=g) * 250 + 2], 1))
    ours = MultiScaleRoIAlign(names, 7, 2)(feats, boxes, sizes)
    ref = torchvision.ops.MultiScaleRoIAlign(names, 7, 2)(feats, boxes, sizes)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)
    grads = torch.autograd.grad(ours.sum(), [feats[k] for k in names])
    refs = torch.autograd.grad(ref.sum(), [feats[k] for k in names])
    for a, b in zip(grads, refs):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4)


def test_module_form_and_bad_input():
    m = RoIAlign((2, 3), 0.5, 2, aligned=True)
    x = torch.randn(1, 2, 5, 5)
    boxes = [torch.tensor([[0.0, 0, 6, 6]])]
    assert torch.equal(m(x, boxes), roi_align(x, boxes, (2, 3), 0.5, 2, True))
    assert "aligned=True" in repr(m)
    with pytest.raises(ValueError, match=r"Tensor\[K, 5\]"):
        roi_align(x, torch.zeros(3, 4), 2)
    with pytest.raises(ValueError, match=r"rois\[0\]"):
        roi_align(x, [torch.zeros(3, 5)], 2)
    with pytest.raises(ValueError, match="output_size"):
        roi_align(x, boxes, 0)
    with pytest.raises(ValueError, match=r"Tensor\[N, C, H, W\]"):
        roi_align(x[0], boxes, 2)
