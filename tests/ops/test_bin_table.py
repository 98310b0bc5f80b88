"""The C++ bin table (one call) is bit-equal to ``_geometry.bin_table``, the one statement of the
geometry, on adversarial boxes: negative, inverted, outside the map, sub-pixel, huge, NaN and
infinite coordinates; float32 and float64; Fast R-CNN's and SPPNet's mappings; square and
rectangular pyramid levels; scales that are not powers of two."""
import math

import pytest
import torch

from detseg.ops import _ext
from detseg.ops._geometry import bin_table

ext = _ext.load_extension()
pytestmark = pytest.mark.skipif(ext is None, reason="the C++ kernels could not be built here")


def adversarial_boxes(dtype: torch.dtype, n: int = 400) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    random = (torch.rand(n, 4, generator=g, dtype=torch.float64) * 140 - 20)
    sub = torch.rand(n, 4, generator=g, dtype=torch.float64) * 2  # sub-pixel boxes
    halves = torch.randint(-40, 120, (n, 4), generator=g).double() + 0.5  # ties of the rounding
    special = torch.tensor([
        [0.0, 0.0, 0.0, 0.0], [10.0, 10.0, 2.0, 3.0], [-50.0, -50.0, -10.0, -5.0],
        [200.0, 210.0, 400.0, 500.0], [1e30, -1e30, 1e30, 1e30], [-0.4999, 0.5, 63.5, 47.49],
        [math.nan, 1.0, 5.0, 5.0], [1.0, 1.0, math.inf, 9.0], [-math.inf, 2.0, 3.0, math.nan],
        [3.0, 4.0, 3.0, 4.0], [15.99, 15.99, 16.01, 16.01], [-1e-7, -1e-7, 1e-7, 1e-7]],
        dtype=torch.float64)
    return torch.cat([random, sub, halves, special]).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mapping", ["fast_rcnn", "sppnet"])
@pytest.mark.parametrize("levels", [[(7, 7)], [(6, 6), (3, 3), (2, 2), (1, 1)], [(2, 3), (5, 1)]])
@pytest.mark.parametrize("scale", [1.0, 1 / 16, 0.3, 1e6])
def test_cpp_bin_table_is_bit_equal_to_the_geometry(dtype, mapping, levels, scale):
    boxes = adversarial_boxes(dtype)
    want = bin_table(boxes, levels, scale, mapping, 48, 64)
    got = ext.bin_table(boxes, [v for size in levels for v in size], scale, mapping == "sppnet", 48, 64)
    assert got.dtype == torch.int32 and got.shape == want.shape
    bad = (got != want).any(-1).any(-1).nonzero().flatten()
    assert bad.numel() == 0, f"boxes {boxes[bad[:3]].tolist()}: {got[bad[0]].tolist()} vs {want[bad[0]].tolist()}"


def test_cpp_bin_table_takes_a_column_slice_and_no_rois():
    rois = torch.tensor([[0, 1.0, 2.0, 30.0, 20.0], [1, 5.0, 5.0, 9.0, 9.0]])
    got = ext.bin_table(rois[:, 1:], [2, 2], 0.5, False, 16, 16)  # a non-contiguous view
    assert torch.equal(got, bin_table(rois[:, 1:], [(2, 2)], 0.5, "fast_rcnn", 16, 16))
    empty = ext.bin_table(torch.zeros(0, 4), [7, 7], 1.0, False, 8, 8)
    assert empty.shape == (0, 49, 4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpp_roi_bins_reads_the_batch_index_and_boxes_of_rois(dtype):
    boxes = adversarial_boxes(dtype, 50)
    batch = torch.tensor([0.0, 1.0, 2.9, 1.2] * (len(boxes) // 4 + 1), dtype=dtype)[: len(boxes)]
    rois = torch.cat([batch[:, None], boxes], 1)
    got_batch, got = ext.roi_bins(rois, [6, 6, 3, 3, 1, 1], 1 / 16, True, 40, 50)
    assert torch.equal(got_batch, rois[:, 0].long())
    assert torch.equal(got, bin_table(rois[:, 1:], [(6, 6), (3, 3), (1, 1)], 1 / 16, "sppnet", 40, 50))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("sampling_ratio", [2, 0, -1])
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("scale", [1.0, 0.25, 1 / 7])
def test_cpp_sample_table_is_bit_equal_to_the_geometry(dtype, sampling_ratio, aligned, scale):
    """RoIAlign's sample table; huge boxes are left out of the adaptive grids, whose sample count
    (ceil(roi / output size)) they would blow up in both forms alike."""
    from detseg.ops._geometry import sample_table
    boxes = adversarial_boxes(dtype, 60)
    if sampling_ratio <= 0:
        boxes = boxes[~(boxes.abs() > 1e4).any(1)]
    batch = (torch.arange(len(boxes)) % 3).to(dtype)
    rois = torch.cat([batch[:, None], boxes], 1)
    want = sample_table(rois, (7, 5), scale, sampling_ratio, aligned, 48, 64)
    got = ext.roi_align_table(rois, 7, 5, scale, sampling_ratio, aligned, 48, 64)
    assert torch.equal(got[0], rois[:, 0].long())
    for name, a, b in zip(["y_index", "y_weight", "x_index", "x_weight", "grid"], got[1:], want):
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert torch.equal(a, b) or torch.equal(a.isnan(), b.isnan()) and torch.equal(
            a.nan_to_num(), b.nan_to_num()), f"{name} differs"


def test_cpp_sample_table_of_no_rois():
    from detseg.ops._geometry import sample_table
    rois = torch.zeros(0, 5)
    for s in (2, 0):
        got = ext.roi_align_table(rois, 7, 7, 0.5, s, True, 10, 10)
        want = sample_table(rois, (7, 7), 0.5, s, True, 10, 10)
        assert [tuple(t.shape) for t in got[1:]] == [tuple(t.shape) for t in want]
