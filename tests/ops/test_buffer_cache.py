"""The C++ kernels' output cache: freed outputs are reused, never with stale contents, and the
cache stays bounded and can be emptied."""
import pytest
import torch
import torchvision

from detseg.ops import backend, release_cpu_cache, roi_align, roi_pool
from detseg.ops._ext import load_extension

pytestmark = pytest.mark.skipif(backend("cpu") != "cpp", reason="needs the C++ kernels")


MIB = 1 << 20


def _case(seed, k=700):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 256, 40, 40, generator=g)  # 256 x 7 x 7 x 700 RoIs x 4 B: a 35 MB output
    xy = torch.rand(k, 2, generator=g) * 500
    rois = torch.cat([torch.zeros(k, 1), xy, xy + torch.rand(k, 2, generator=g) * 200 + 16], 1)
    return x, rois


def test_a_freed_output_is_reused_with_fresh_contents():
    release_cpu_cache()
    x, rois = _case(0)  # 35 MB: above the cache's 32 MiB floor
    out = roi_pool(x, rois, 7, 1 / 16)
    ptr = out.data_ptr()
    del out
    assert load_extension().cached_buffer_bytes() >= 700 * 256 * 49 * 4
    x2, rois2 = _case(1)
    again = roi_pool(x2, rois2, 7, 1 / 16)
    assert again.data_ptr() == ptr  # the same block, already paged in
    assert torch.equal(again, torchvision.ops.roi_pool(x2, rois2, 7, 1 / 16))
    # RoIAlign's zero-initialised outputs too: the block's old values must not leak in
    del again
    a = roi_align(x2, rois2, 7, 1 / 16, 2, True)
    assert a.data_ptr() == ptr
    torch.testing.assert_close(a, torchvision.ops.roi_align(x2, rois2, 7, 1 / 16, 2, True),
                               rtol=0, atol=1e-6)


def test_reused_gradient_buffers_start_from_zero():
    release_cpu_cache()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 256, 184, 184, generator=g)  # the input gradient is 34.7 MB: cached
    rois = torch.tensor([[0, 10.0, 10, 300, 300], [0, 100, 50, 900, 700]])
    for step in range(3):
        w = torch.randn(2, 256, 7, 7, generator=g)
        ours, theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
        (roi_pool(ours, rois, 7, 1 / 16) * w).sum().backward()
        (torchvision.ops.roi_pool(theirs, rois, 7, 1 / 16) * w).sum().backward()
        assert torch.equal(ours.grad, theirs.grad), step


def test_cache_is_bounded_and_can_be_emptied():
    release_cpu_cache()
    ext = load_extension()
    x, _ = _case(3)
    sizes = []
    for k in range(700, 1900, 100):  # 12 outputs of different sizes, each freed at once
        _, rois = _case(4, k=k)
        roi_pool(x, rois, 7, 1 / 16)
        sizes.append(k * 256 * 49 * 4)
    held = ext.cached_buffer_bytes()
    assert 0 < held <= 8 * (max(sizes) + 2 * MIB)  # at most 8 blocks, each rounded to 2 MiB
    # an output below the floor comes from torch's allocator and is not kept
    release_cpu_cache()
    roi_pool(x, _case(5, k=100)[1], 7, 1 / 16)  # 5 MB
    assert ext.cached_buffer_bytes() == 0
    roi_pool(x, _case(6)[1], 7, 1 / 16)
    held = ext.cached_buffer_bytes()
    assert release_cpu_cache() == held
    assert ext.cached_buffer_bytes() == 0


def test_a_reused_block_is_counted_at_its_own_size():
    """A smaller output may reuse a bigger block (up to twice its size); when freed, the block
    must go back counted at its real size, or the cache's byte bound undercounts what it holds."""
    release_cpu_cache()
    ext = load_extension()
    x, _ = _case(7)
    roi_pool(x, _case(8, k=900)[1], 7, 1 / 16)  # 45 MB output, freed at once
    big = ext.cached_buffer_bytes()
    roi_pool(x, _case(9, k=700)[1], 7, 1 / 16)  # 35 MB: takes the 45 MB block, gives it back
    assert ext.cached_buffer_bytes() == big
    release_cpu_cache()
