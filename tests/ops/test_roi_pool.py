"""RoI / SPP pooling against torchvision, the float64 reference and a hand-worked SPPNet case."""
import os

import pytest
import torch
import torchvision

from detseg.ops import RoIPool, SpatialPyramidPool, _reference, backend, roi_pool, roi_spp_pool
from detseg.ops._geometry import bin_table


def random_rois(g, k, n, size, max_box):
    """RoIs partly or wholly outside the map, degenerate and inverted ones included."""
    xy = torch.rand(k, 2, generator=g) * (size * 1.4) - size * 0.2
    wh = torch.rand(k, 2, generator=g) * max_box
    boxes = torch.cat([xy, xy + wh], 1)
    boxes[: k // 10] = boxes[: k // 10, [2, 3, 0, 1]]  # inverted (x2 < x1)
    boxes[k // 10: k // 5, 2:] = boxes[k // 10: k // 5, :2]  # zero-size
    batch = torch.randint(0, n, (k, 1), generator=g).float()
    return torch.cat([batch, boxes], 1)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fast_rcnn_mapping_equals_torchvision_forward_and_backward(seed, dtype):
    g = torch.Generator().manual_seed(seed)
    n, c, h, w = 2, 5, 13 + seed, 17
    x = torch.randn(n, c, h, w, generator=g, dtype=dtype)
    if seed % 2:  # non-contiguous input
        x = torch.randn(n, h, w, c, generator=g, dtype=dtype).permute(0, 3, 1, 2)
    x.requires_grad_(True)
    scale = [1 / 16, 0.25, 0.3, 1.0, 1 / 7, 0.5][seed]
    rois = random_rois(g, 60, n, w / scale, 200 * scale + 10).to(dtype)
    out_size = [7, (3, 5), 1, 2, (6, 4), 7][seed]
    ours = roi_pool(x, rois, out_size, scale)
    ref = torchvision.ops.roi_pool(x, rois, out_size, scale)
    assert torch.equal(ours, ref)
    grad = torch.randn(ours.shape, generator=g, dtype=dtype)
    (g_ours,) = torch.autograd.grad(ours, x, grad)
    (g_ref,) = torch.autograd.grad(ref, x, grad)
    assert torch.equal(g_ours, g_ref)
    # Same result through the SPP entry point with one level and Fast R-CNN mapping.
    oh, ow = (out_size, out_size) if isinstance(out_size, int) else out_size
    spp = roi_spp_pool(x, rois, [(oh, ow)], scale, mapping="fast_rcnn")
    assert torch.equal(spp, ref.reshape(len(rois), -1))


def test_list_of_boxes_and_empty_rois():
    x = torch.randn(2, 3, 10, 10, requires_grad=True)
    boxes = [torch.tensor([[0.0, 0, 5, 5]]), torch.tensor([[2.0, 2, 9, 9], [1, 1, 3, 3]])]
    as_tensor = torch.tensor([[0, 0.0, 0, 5, 5], [1, 2, 2, 9, 9], [1, 1, 1, 3, 3]])
    assert torch.equal(roi_pool(x, boxes, 2), roi_pool(x, as_tensor, 2))
    assert torch.equal(roi_pool(x, boxes, 2), torchvision.ops.roi_pool(x, boxes, 2))
    empty = roi_pool(x, torch.zeros(0, 5), 7)
    assert empty.shape == (0, 3, 7, 7)
    spp = roi_spp_pool(x, torch.zeros(0, 5))
    assert spp.shape == (0, 3 * (36 + 9 + 4 + 1))
    spp.sum().backward()
    assert x.grad is not None and (x.grad == 0).all()


def test_wholly_outside_roi_gives_zero_and_no_gradient():
    x = torch.randn(1, 2, 8, 8, requires_grad=True)
    out = roi_pool(x, torch.tensor([[0, 500.0, 500, 600, 600]]), 3)
    assert (out == 0).all()
    out.sum().backward()
    assert (x.grad == 0).all()


def test_gradcheck_float64():
    g = torch.Generator().manual_seed(0)
    # Distinct values: the max is unique, so the op is differentiable where gradcheck probes.
    x = (torch.randperm(2 * 3 * 9 * 11, generator=g).double() / 7).reshape(2, 3, 9, 11)
    x.requires_grad_(True)
    rois = torch.tensor([[0, 0.0, 0, 10, 8], [1, 2, 1, 7, 7], [0, 3, 3, 3, 3], [1, -5, -5, 4, 20]],
                        dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: roi_pool(t, rois, (3, 2), 1.0), (x,))
    assert torch.autograd.gradcheck(lambda t: roi_spp_pool(t, rois, (3, 2, 1), 0.9), (x,))


def test_sppnet_mapping_matches_hand_worked_case():
    # Stride S = 16. Window (x1, y1, x2, y2) = (0, 0, 100, 60) in the image maps, by the paper's
    # rule, to left = floor(0/16)+1 = 1, right = ceil(100/16)-1 = 6, top = 1, bottom = ceil(60/16)-1 = 3:
    # columns 1..6 and rows 1..3 of the feature map (inclusive).
    x = torch.arange(5 * 8, dtype=torch.float32).reshape(1, 1, 5, 8)  # value = 8 * row + col
    rois = torch.tensor([[0, 0.0, 0, 100, 60]])
    out = roi_spp_pool(x, rois, levels=(2, 1), spatial_scale=1 / 16, mapping="sppnet")
    # Level 2 splits 6 columns into [1..3], [4..6] and 3 rows into [1..2], [2..3]
    # (bin i spans floor(i*size/l) .. ceil((i+1)*size/l)); each max is the bottom-right cell.
    level2 = [8 * 2 + 3, 8 * 2 + 6, 8 * 3 + 3, 8 * 3 + 6]
    level1 = [8 * 3 + 6]
    assert out.tolist() == [level2 + level1]
    # An inverted window collapses to its middle cell: (40, 40, 44, 44) → left 3, right 2 → cell 2.
    collapsed = roi_spp_pool(x, torch.tensor([[0, 40.0, 40, 44, 44]]), (1,), 1 / 16, "sppnet")
    assert collapsed.item() == 8 * 2 + 2


def test_spp_layout_is_per_level_flattened_in_order():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 4, 20, 20, generator=g)
    rois = torch.tensor([[0, 10.0, 20, 200, 250]])
    out = roi_spp_pool(x, rois, (3, 1), 1 / 16, mapping="fast_rcnn")
    l3 = torchvision.ops.roi_pool(x, rois, 3, 1 / 16).reshape(1, -1)
    l1 = torchvision.ops.roi_pool(x, rois, 1, 1 / 16).reshape(1, -1)
    assert torch.equal(out, torch.cat([l3, l1], 1))


@pytest.mark.parametrize("level_bins", [None, [36, 9, 4, 1], [50]])
@pytest.mark.parametrize("mapping", ["fast_rcnn", "sppnet"])
def test_kernel_equals_float64_reference(mapping, level_bins):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 6, 15, 19, generator=g, dtype=torch.float64)
    x[0, 0, 3:6, 3:6] = 1.5  # ties: the first maximum in row-major order must win
    rois = random_rois(g, 50, 2, 300, 250).double()
    batch = rois[:, 0].long()
    bins = bin_table(rois[:, 1:], (6, 3, 2, 1), 1 / 16, mapping, 15, 19)
    levels = level_bins or [50]
    ref_out, ref_arg = _reference.bin_max_pool_forward(x, batch, bins, level_bins)
    out, arg = torch.ops.detseg.bin_max_pool(x, batch, bins, True, level_bins)
    assert out.shape == arg.shape == (50, 6 * 50)
    assert torch.equal(out, ref_out) and torch.equal(arg, ref_arg)
    grad = torch.randn(out.shape, generator=g, dtype=torch.float64)
    ref_gin = _reference.bin_max_pool_backward(grad, ref_arg, batch, 2, 15, 19, levels)
    gin = torch.ops.detseg.bin_max_pool_backward(grad, arg, batch, 2, 15, 19, levels)
    torch.testing.assert_close(gin, ref_gin, rtol=0, atol=1e-12)


def test_level_layout_is_each_level_flattened_then_concatenated():
    """With level_bins, the row of a RoI is level 0's [C, B0] block, then level 1's, ...: the
    same numbers as one-level pooling, rearranged; its gradient is the one-level gradient."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(1, 4, 12, 12, generator=g, dtype=torch.float64, requires_grad=True)
    rois = random_rois(g, 7, 1, 190, 190).double()
    batch = rois[:, 0].long()
    bins = bin_table(rois[:, 1:], (3, 2, 1), 1 / 16, "sppnet", 12, 12)
    flat, _ = torch.ops.detseg.bin_max_pool(x, batch, bins)  # one level: [K, C, B] flattened
    flat = flat.reshape(7, 4, 14)
    expected = torch.cat([flat[:, :, 0:9].flatten(1), flat[:, :, 9:13].flatten(1),
                          flat[:, :, 13:].flatten(1)], 1)
    out, _ = torch.ops.detseg.bin_max_pool(x, batch, bins, True, [9, 4, 1])
    assert torch.equal(out, expected)
    w = torch.randn(out.shape, generator=g, dtype=torch.float64)
    (ours,) = torch.autograd.grad((out * w).sum(), x)
    (theirs,) = torch.autograd.grad((expected * w).sum(), x)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="sum to"):
        torch.ops.detseg.bin_max_pool(x, batch, bins, True, [9, 4])


def test_ties_and_extreme_values_route_gradient_like_torchvision():
    x = torch.zeros(1, 2, 6, 6)
    x[0, 0] = 3.0  # all tied: the first cell of each bin takes the gradient
    x[0, 1] = -float("inf")  # nothing beats -FLT_MAX: output -FLT_MAX, no gradient
    x[0, 1, 4, 4] = -3.4028234663852886e38
    x.requires_grad_(True)
    rois = torch.tensor([[0, 0.0, 0, 5, 5], [0, 1, 1, 4, 5]])
    ours = roi_pool(x, rois, 2)
    ref = torchvision.ops.roi_pool(x, rois, 2)
    assert torch.equal(ours, ref)
    g = torch.arange(ours.numel(), dtype=torch.float32).reshape(ours.shape)
    assert torch.equal(torch.autograd.grad(ours, x, g)[0], torch.autograd.grad(ref, x, g)[0])


def test_nan_never_wins_and_modules_repr():
    x = torch.zeros(1, 1, 4, 4)
    x[0, 0, 0, 0] = float("nan")
    x[0, 0, 1, 1] = 2.0
    assert roi_pool(x, torch.tensor([[0, 0.0, 0, 3, 3]]), 1).item() == 2.0
    assert torchvision.ops.roi_pool(x, torch.tensor([[0, 0.0, 0, 3, 3]]), 1).item() == 2.0
    spp = SpatialPyramidPool((6, 3, 2, 1), 1 / 16)
    assert "levels=(6, 3, 2, 1)" in repr(spp) and "bins=50" in repr(spp)
    assert spp.out_features(256) == 256 * 50
    assert "output_size=7" in repr(RoIPool(7, 1 / 16))
    with pytest.raises(ValueError, match="mapping"):
        roi_spp_pool(x, torch.zeros(0, 5), mapping="nearest")
    with pytest.raises(ValueError, match=r"Tensor\[K, 5\]"):
        roi_pool(x, torch.zeros(3, 4), 2)


def test_backend_follows_environment():
    expected = "reference" if os.environ.get("DETSEG_NO_EXT") == "1" else "cpp"
    assert backend("cpu", torch.float32) == expected
    assert backend("cpu", torch.float16) == expected  # computed in float32
    assert backend("cuda") == "triton"


def test_traceable_by_export_and_compile():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.pool = SpatialPyramidPool((2, 1), 1 / 4)

        def forward(self, feats, rois):
            return self.pool(feats, rois) * 2

    feats = torch.randn(1, 3, 8, 8)
    rois = torch.tensor([[0, 0.0, 0, 20, 20], [0, 4, 4, 30, 16]])
    net = Net()
    exported = torch.export.export(net, (feats, rois))
    # exported graphs hold the window form of the op (ONNX MaxRoiPool's), one node
    assert "detseg.window_max_pool" in str(exported.graph)
    assert torch.equal(exported.module()(feats, rois), net(feats, rois))
    compiled = torch.compile(net, backend="aot_eager", fullgraph=True)
    assert torch.equal(compiled(feats, rois), net(feats, rois))


@pytest.mark.parametrize("levels", [(3,), (3, 2, 1)], ids=["roi_pool", "spp"])
def test_the_export_form_has_the_same_gradient(levels, monkeypatch):
    """torch 2.11's torch.compile, after a torch.export in the same process, traced the export
    branch (window_max_pool) while training; its backward must then give the eager gradient."""
    x = torch.randn(2, 3, 10, 12, dtype=torch.float64)
    rois = torch.tensor([[0, 1.0, 2, 30, 25], [1, 0, 0, 47, 39], [0, 8, 8, 9, 9]], dtype=torch.float64)
    expected_x = x.clone().requires_grad_(True)
    expected = roi_spp_pool(expected_x, rois, levels, 0.25)
    weights = torch.randn_like(expected)
    (expected * weights).sum().backward()

    monkeypatch.setattr(torch.compiler, "is_exporting", lambda: True)
    got_x = x.clone().requires_grad_(True)
    got = roi_spp_pool(got_x, rois, levels, 0.25)
    assert "window_max_pool" in str(got.grad_fn.name())
    (got * weights).sum().backward()
    assert torch.equal(got, expected) and torch.equal(got_x.grad, expected_x.grad)
    torch.autograd.gradcheck(lambda t: roi_spp_pool(t, rois, levels, 0.25),
                             (x.clone().requires_grad_(True),))


def test_pyramid_bins_combined_from_finer_bins_keep_the_scan_order():
    """A 1x1 bin that the 2x2 level tiles exactly is combined from the 2x2 results, not scanned:
    ties across the quadrants must still go to the first cell in row-major order, an all -inf
    channel must still output -FLT_MAX with no gradient, and NaN must never win."""
    x = torch.randn(1, 4, 12, 12, dtype=torch.float64)
    x[0, 0] = 2.0  # every cell tied: the RoI's first cell wins at every level
    x[0, 1] = -float("inf")
    x[0, 2, 7, 1] = float("nan")
    x[0, 3, 3, 0:6] = 5.0  # a tie between the top-left quadrant (bin 0, its row 3) and
    x[0, 3, 0, 6:12] = 5.0  # the top-right one (bin 1, row 0): the scan meets row 0 first
    rois = torch.tensor([[0, 0.0, 0, 11, 11]], dtype=torch.float64)  # exactly the 12x12 map
    bins = bin_table(rois[:, 1:], (2, 1), 1.0, "fast_rcnn", 12, 12)
    batch = rois[:, 0].long()
    ref_out, ref_arg = _reference.bin_max_pool_forward(x, batch, bins, [4, 1])
    out, arg = torch.ops.detseg.bin_max_pool(x, batch, bins, True, [4, 1])
    assert torch.equal(out, ref_out) and torch.equal(arg, ref_arg)
    one_by_one = arg.reshape(-1)[16:]  # the 1x1 level's [C] block
    assert one_by_one.tolist() == [0, -1, one_by_one[2].item(), 6]
    assert not torch.isnan(out).any()
