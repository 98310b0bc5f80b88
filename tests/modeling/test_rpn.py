import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList

from detseg.modeling.proposals.rpn import RPN


def test_anchors_match_torchvision_layout():
    ratios = (0.5, 1.0, 2.0)
    rpn = RPN(in_channels=8, features=["a", "b"], strides=[8, 16],
              anchor_sizes=[[32, 64, 128]] * 2, aspect_ratios=ratios)
    feats = {"a": torch.zeros(1, 8, 12, 10), "b": torch.zeros(1, 8, 6, 5)}
    ours = rpn.anchors(feats, (96, 80))
    tv = AnchorGenerator(((32, 64, 128),) * 2, (ratios,) * 2)
    theirs = tv(ImageList(torch.zeros(1, 3, 96, 80), [(96, 80)]), [feats["a"], feats["b"]])[0]
    torch.testing.assert_close(torch.cat(ours), theirs)


def test_rpn_trains_and_proposes_per_image():
    torch.manual_seed(0)
    rpn = RPN(in_channels=8, features=["c4"], strides=[16], anchor_sizes=[[32, 64]],
              post_nms_top_n=(50, 20))
    feats = {"c4": torch.randn(2, 8, 6, 8)}
    batch = {"images": torch.zeros(2, 3, 96, 128), "image_sizes": [(96, 128), (80, 100)],
             "targets": [{"boxes": torch.tensor([[10.0, 10.0, 60.0, 50.0]])},
                         {"boxes": torch.zeros(0, 4)}]}
    props, losses = rpn(feats, batch)
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_box"}
    assert all(torch.isfinite(v) for v in losses.values())
    assert len(props) == 2 and all(len(p) <= 50 for p in props)
    assert (props[1][:, 2] <= 100).all() and (props[1][:, 3] <= 80).all()  # clipped to its own size
    losses["loss_rpn_cls"].backward()
    assert rpn.objectness.weight.grad.abs().sum() > 0
    rpn.eval()
    props, losses = rpn(feats, batch)
    assert losses == {} and all(len(p) <= 20 for p in props)
