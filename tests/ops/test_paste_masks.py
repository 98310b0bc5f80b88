import pytest
import torch
from torchvision.models.detection.roi_heads import paste_masks_in_image

from detseg.ops.paste_masks import paste_masks


def _case(n=40, h=120, w=170, seed=0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * torch.tensor([w, h]) * 1.1 - 10  # some boxes leave the image
    wh = torch.rand(n, 2, generator=g) * 90 + 0.05  # from slivers to larger than the mask
    return torch.rand(n, 28, 28, generator=g), torch.cat([xy, xy + wh], 1), (h, w)


@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_batched_paste_equals_torchvisions_per_mask_paste(chunk):
    masks, boxes, size = _case()
    ref = paste_masks_in_image(masks[:, None], boxes, size)[:, 0]  # a Python loop, one mask at a time
    probs = paste_masks(masks, boxes, size, threshold=None, chunk=chunk)
    torch.testing.assert_close(probs, ref, atol=1e-5, rtol=0)
    got = paste_masks(masks, boxes, size, chunk=chunk)
    assert got.dtype == torch.bool and got.shape == (40, *size)
    unsure = (ref - 0.5).abs() < 1e-5  # float rounding may tip these either way
    assert torch.equal(got[~unsure], (ref >= 0.5)[~unsure])
    assert got.any()


def test_a_full_mask_covers_its_box_to_within_a_pixel():
    got = paste_masks(torch.ones(1, 28, 28), torch.tensor([[10.0, 20.0, 50.0, 40.0]]), (64, 64))[0]
    ys, xs = torch.nonzero(got, as_tuple=True)
    extent = torch.tensor([ys.min(), ys.max() + 1, xs.min(), xs.max() + 1])
    assert (extent - torch.tensor([20, 40, 10, 50])).abs().max() <= 1  # integer box truncation


def test_no_masks():
    assert paste_masks(torch.zeros(0, 28, 28), torch.zeros(0, 4), (10, 12)).shape == (0, 10, 12)
