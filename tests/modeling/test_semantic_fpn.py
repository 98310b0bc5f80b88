"""Panoptic FPN's semantic branch: shapes, the levels it reads, learning, and its place in a
panoptic model (stuff classes for the semantic head, thing classes for the instance head)."""
import pytest
import torch

from detseg.config import load_config
from detseg.modeling.backbones import ShapeSpec, build_backbone
from detseg.modeling.heads import SemanticFPNHead
from detseg.modeling.heads.semantic_fpn import SemanticFPNHeadConfig
from detseg.modeling.model import build_model
from detseg.structures import Batch

RECIPE = "configs/panoptic_fpn_resnet18_shapes.yaml"


def test_reads_every_fpn_level_but_the_pooled_one_and_returns_input_sized_logits():
    backbone = build_backbone("resnet18", fpn=True, fpn_channels=32, fpn_extra_pool=True)
    head = SemanticFPNHead.from_config(SemanticFPNHeadConfig(conv_dims=16), backbone, num_classes=3)
    assert head.in_features == ["p3", "p4", "p5"] and head.common_stride == 8
    # one conv per 2x step, and one for the finest level: 1, 1 and 2 stages
    assert [sum(isinstance(m, torch.nn.Conv2d) for m in s) for s in head.stages] == [1, 1, 2]
    x = torch.randn(2, 3, 96, 128)
    out = head(backbone(x), (96, 128))
    assert out.shape == (2, 4, 96, 128)


def test_learns_a_map_from_fixed_features():
    torch.manual_seed(0)
    shapes = {"p3": ShapeSpec(8, 8), "p4": ShapeSpec(8, 16)}
    head = SemanticFPNHead(in_shapes=shapes, num_classes=2, conv_dims=16, norm="gn")
    feats = {"p3": torch.randn(2, 8, 8, 8), "p4": torch.randn(2, 8, 4, 4)}
    target = torch.zeros(2, 64, 64, dtype=torch.uint8)
    target[:, :, 32:] = 1
    target[:, 40:, :] = 2
    target[:, :4] = 255  # ignored
    batch = Batch(images=torch.zeros(2, 3, 64, 64, dtype=torch.uint8), semantic=target)
    opt = torch.optim.Adam(head.parameters(), lr=0.01)
    for _ in range(60):
        loss = head.forward_train(feats, batch)["loss_sem_seg"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    pred = head.eval().forward_test(feats, batch).argmax(1)
    keep = target != 255
    assert (pred[keep] == target[keep].long()).float().mean() > 0.9


def test_loss_weight_scales_the_loss_and_bad_levels_are_named():
    shapes = {"p3": ShapeSpec(8, 8), "p4": ShapeSpec(8, 16)}
    torch.manual_seed(0)
    a = SemanticFPNHead(in_shapes=shapes, num_classes=2, conv_dims=8)
    torch.manual_seed(0)
    b = SemanticFPNHead(in_shapes=shapes, num_classes=2, conv_dims=8, loss_weight=0.5)
    feats = {"p3": torch.randn(1, 8, 4, 4), "p4": torch.randn(1, 8, 2, 2)}
    batch = Batch(images=torch.zeros(1, 3, 32, 32, dtype=torch.uint8),
                  semantic=torch.ones(1, 32, 32, dtype=torch.uint8))
    la, lb = a.forward_train(feats, batch)["loss_sem_seg"], b.forward_train(feats, batch)["loss_sem_seg"]
    assert lb.item() == pytest.approx(0.5 * la.item())
    with pytest.raises(ValueError, match="p6.*not backbone features"):
        SemanticFPNHead(in_shapes=shapes, num_classes=2, in_features=["p3", "p6"])
    with pytest.raises(ValueError, match="power-of-two"):
        SemanticFPNHead(in_shapes={"p3": ShapeSpec(8, 8), "x": ShapeSpec(8, 24)}, num_classes=2)


def test_panoptic_recipe_builds_stuff_semantics_beside_thing_instances():
    cfg = load_config(RECIPE)
    model = build_model(cfg, num_classes=4, num_stuff=3)
    assert model.heads["sem"].num_outputs == 4  # things + sky, ground, water
    assert model.heads["det"].predictor.cls_score.out_features == 5  # 4 shapes + background
    # without panoptic data the semantic head predicts the thing classes, as an FCN would
    assert build_model(cfg, num_classes=4).heads["sem"].num_outputs == 5


def test_panoptic_drawing_tints_stuff_and_outlines_things():
    import numpy as np

    from detseg.visualize import draw_panoptic
    image = np.full((60, 80, 3), 128, np.uint8)
    ids = np.ones((60, 80), np.int32)  # segment 1: stuff everywhere ...
    ids[20:40, 30:50] = 2  # ... but a thing in the middle
    segments = [{"id": 1, "isthing": False, "label": 0, "name": "sky"},
                {"id": 2, "isthing": True, "label": 3, "name": "hexagon"}]
    out = draw_panoptic(image, ids, segments)
    assert out.shape == image.shape and (image == 128).all()  # drawn on a copy
    assert (out[55, 70] != 128).any()  # stuff tinted
    assert (out[30, 40] == 128).all()  # a thing's inside is left to be seen ...
    assert (out[39, 40] != 128).any()  # ... inside its outline
