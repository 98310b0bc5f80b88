import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from detseg.modeling.box_coder import BoxCoder
from detseg.modeling.heads.region import hard_negatives
from detseg.modeling.sampling import BACKGROUND, IGNORED, match, sample

coords = st.floats(0, 500, allow_nan=False, allow_infinity=False)
sizes = st.floats(1, 400, allow_nan=False, allow_infinity=False)


@st.composite
def box(draw):
    x, y, w, h = draw(coords), draw(coords), draw(sizes), draw(sizes)
    return [x, y, x + w, y + h]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(box(), box()), min_size=1, max_size=8),
       st.sampled_from([(10.0, 10.0, 5.0, 5.0), (1.0, 1.0, 1.0, 1.0)]))
def test_encode_decode_round_trip(pairs, weights):
    ref = torch.tensor([p[0] for p in pairs], dtype=torch.float64)
    gt = torch.tensor([p[1] for p in pairs], dtype=torch.float64)
    coder = BoxCoder(weights, scale_clamp=math.log(1e4))
    torch.testing.assert_close(coder.decode(coder.encode(ref, gt), ref), gt, atol=1e-6, rtol=1e-9)


def test_decode_clamps_so_exp_cannot_overflow():
    coder = BoxCoder()
    out = coder.decode(torch.tensor([[0.0, 0.0, 1e4, 1e4]]), torch.tensor([[0.0, 0.0, 10.0, 10.0]]))
    assert torch.isfinite(out).all()
    assert (out[0, 2] - out[0, 0]) <= 10 * 1000 / 16 + 1e-3


def test_hard_negative_miner_picks_exactly_the_margin_violators():
    scores = torch.tensor([-3.0, -1.0, -0.999, 0.5, 2.0, -0.2, -5.0])
    negative = torch.tensor([True, True, True, True, False, True, True])
    # a negative violates the margin when its score exceeds -1 (hinge term 1 + s > 0)
    assert hard_negatives(scores, negative).tolist() == [2, 3, 5]
    assert hard_negatives(scores, negative, margin=0.0).tolist() == [3]


def test_match_labels_foreground_background_and_ignored():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    cands = torch.tensor([[0.0, 0.0, 10.0, 10.0],    # IoU 1 -> fg
                          [0.0, 0.0, 10.0, 6.0],     # IoU 0.6 -> fg
                          [0.0, 0.0, 10.0, 4.5],     # IoU 0.45 -> ignored (between thresholds)
                          [20.0, 20.0, 30.0, 30.0],  # IoU 0 -> bg
                          [100.0, 100.0, 110.0, 110.0]])  # inside a crowd box -> ignored
    crowd = torch.tensor([[90.0, 90.0, 200.0, 200.0]])
    matched, best = match(cands, gt, fg_iou=0.5, bg_iou=0.4, ignore=crowd)
    assert matched.tolist() == [0, 0, IGNORED, BACKGROUND, IGNORED]
    fg, bg = sample(matched, batch_size=4, fg_fraction=0.25, generator=torch.Generator().manual_seed(0))
    assert len(fg) == 1 and fg.item() in (0, 1)
    assert bg.tolist() == [3]
