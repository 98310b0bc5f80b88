import torch

from detseg.config import load_config
from detseg.data import shapes
from detseg.data.coco import CocoDataset
from detseg.data.transforms import collate, eval_transform
from detseg.evaluation.coco import COCOEvaluator
from detseg.modeling.backbones import ShapeSpec
from detseg.modeling.heads.mask import MaskHead, mask_targets
from detseg.modeling.model import build_model
from detseg.modeling.panoptic import merge_panoptic
from detseg.structures import Instances
from tests.conftest import overfit


def test_mask_targets_of_a_square_in_a_known_roi():
    gt = torch.zeros(1, 100, 100, dtype=torch.uint8)
    gt[0, 20:40, 30:50] = 1  # a 20 x 20 square
    # RoI (20, 10, 60, 50): 40 x 40 px, the square fills x 10..30 and y 10..30 of it, i.e. the
    # middle half of each axis: cells 7..20 of 28.
    t = mask_targets(gt, torch.tensor([0]), torch.tensor([[20.0, 10.0, 60.0, 50.0]]), 28)[0]
    expected = torch.zeros(28, 28)
    expected[7:21, 7:21] = 1
    assert torch.equal(t, expected)
    # a RoI exactly on the square is all ones
    t = mask_targets(gt, torch.tensor([0]), torch.tensor([[30.0, 20.0, 50.0, 40.0]]), 28)[0]
    assert t.min() == 1


def _small_mask_head(**kw):
    torch.manual_seed(0)
    return MaskHead(in_shapes={"p3": ShapeSpec(8, 8)}, num_classes=3, conv_dims=[8, 8], **kw)


def _positives(counts, size=96):
    """Per image: ``n`` positive RoIs (row i's x0 is i, so rows can be told apart), their labels
    (1 + i % 2), their matched object (i % 3: three square objects) and the objects' masks."""
    rois, labels, matched, masks = [], [], [], []
    for n in counts:
        i = torch.arange(n, dtype=torch.float32)
        rois.append(torch.stack([i, i, i + 40, i + 40], 1))
        labels.append(1 + torch.arange(n) % 2)
        matched.append(torch.arange(n) % 3)
        m = torch.zeros(3, size, size, dtype=torch.uint8)
        for g in range(3):
            m[g, 10 * g:10 * g + 30, 5:35] = 1
        masks.append(m)
    return rois, labels, matched, masks


def test_mask_loss_draws_at_most_rois_per_image_positives_at_random():
    rois, labels, matched, _ = _positives([10, 3])
    head = _small_mask_head(rois_per_image=4)
    firsts = set()
    for seed in range(6):
        torch.manual_seed(seed)
        r, lab, mat = head.subsample(rois, labels, matched)
        assert [len(x) for x in r] == [4, 3]
        for x, y, z in zip(r, lab, mat):  # the same rows of every per-RoI tensor
            idx = x[:, 0].long()
            assert torch.equal(y, 1 + idx % 2) and torch.equal(z, idx % 3)
        assert len(set(r[0][:, 0].tolist())) == 4  # without replacement
        assert torch.equal(r[1], rois[1])  # an image with fewer positives keeps them all
        firsts.add(tuple(r[0][:, 0].tolist()))
    assert len(firsts) > 1  # a random share, not the first k rows
    assert _small_mask_head().subsample(rois, labels, matched)[0] is rois  # None: all of them


def test_capped_mask_loss_is_the_full_loss_on_the_drawn_rows():
    rois, labels, matched, masks = _positives([10, 3])
    feats = {"p3": torch.randn(2, 8, 12, 12)}
    sizes = [(96, 96), (96, 96)]
    capped, full = _small_mask_head(rois_per_image=4), _small_mask_head()
    torch.manual_seed(7)
    loss = capped.loss(feats, rois, labels, matched, masks, sizes)
    torch.manual_seed(7)
    drawn = capped.subsample(rois, labels, matched)
    assert torch.allclose(loss, full.loss(feats, *drawn, masks, sizes))
    assert not torch.allclose(loss, full.loss(feats, rois, labels, matched, masks, sizes))


def _one_image(tmp_path, with_semantic=False):
    split = shapes.generate(str(tmp_path / "ds"), seed=5, num_train=1, num_val=0)["train"]
    ds = CocoDataset(split["ann_file"], split["image_dir"], transform=eval_transform(128, 288),
                     with_masks=True, with_semantic=with_semantic)
    return split, ds, collate([ds[0]])


def test_mask_rcnn_overfits_one_image_to_mask_ap50_one(tmp_path):
    split, ds, batch = _one_image(tmp_path)
    cfg = load_config("configs/mask_rcnn_resnet18_fpn_shapes.yaml", ["model.backbone.norm=frozen_bn"])
    torch.manual_seed(0)
    model = build_model(cfg, ds.num_classes)
    seen = []

    def check(out):
        ev = COCOEvaluator(split["ann_file"], ds.cat_ids, ds.class_names, iou_types=("bbox", "segm"))
        ev.process(batch, out["det"])
        seen.append(ev.evaluate()["segm_AP50"])
        return seen[-1] == 1.0

    assert overfit(model, batch, 200, check), seen


def test_multi_head_model_runs_the_backbone_once_and_returns_every_output(tmp_path):
    split, ds, batch = _one_image(tmp_path, with_semantic=True)
    cfg = load_config("configs/panoptic_fcn_mask_rcnn_resnet18_fpn_shapes.yaml",
                      ["model.backbone.norm=frozen_bn"])
    torch.manual_seed(0)
    model = build_model(cfg, ds.num_classes)
    calls = []
    model.backbone.register_forward_hook(lambda *a: calls.append(1))
    losses = model.train()(batch)
    assert len(calls) == 1
    assert {"loss_fcn", "loss_rpn_cls", "loss_cls", "loss_box", "loss_mask"} <= set(losses)
    losses["loss"].backward()
    assert model.heads["seg"].score_top.weight.grad is not None
    assert model.heads["det"].mask_head.predictor.weight.grad is not None
    calls.clear()
    with torch.no_grad():
        out = model.eval()(batch)
    assert len(calls) == 1
    assert out["seg"].shape[1] == ds.num_classes + 1
    assert isinstance(out["det"][0], Instances) and out["det"][0].masks is not None
    pan, segments = out["panoptic"][0]
    assert tuple(pan.shape) == tuple(batch["orig_sizes"][0])  # merged at the file's size


def test_panoptic_merge_resolves_overlaps_by_score_and_drops_small_leftovers():
    semantic = torch.zeros(20, 20, dtype=torch.long)
    semantic[:, 10:] = 2  # class 1 on the right half
    semantic[0:2, 0:2] = 1  # a 4-pixel leftover of class 0: too small
    masks = torch.zeros(3, 20, 20, dtype=torch.bool)
    masks[0, 5:15, 5:15] = True   # score 0.9
    masks[1, 5:15, 10:20] = True  # score 0.8, half hidden by the first: kept (overlap 0.5 is not > 0.5)
    masks[2, 6:14, 6:14] = True   # score 0.7, entirely hidden: dropped
    inst = Instances((20, 20), torch.tensor([[5.0, 5, 15, 15], [10, 5, 20, 15], [6, 6, 14, 14]]),
                     torch.tensor([0.9, 0.8, 0.7]), torch.tensor([0, 1, 0]), masks)
    pan, segments = merge_panoptic(semantic, inst, instance_score=0.5, overlap=0.5, min_area=8)
    things = [s for s in segments if s["isthing"]]
    assert [(s["label"], s["area"]) for s in things] == [(0, 100), (1, 50)]
    assert (pan[5:15, 5:15] == 1).all() and (pan[5:15, 15:20] == 2).all()
    stuff = [s for s in segments if not s["isthing"]]
    # what is left of the right half (200 - 50 covered by instance 2 - 50 by instance 1) stays
    assert [(s["label"], s["area"]) for s in stuff] == [(1, 100)]
    assert (pan[0:2, 0:2] == 0).all()


def test_panoptic_merge_keeps_a_small_instance_as_detectron2_does():
    """detectron2's combine_semantic_and_instance_outputs drops an instance only by score and
    overlap; the area limit is for stuff. A 4-pixel instance under a min_area of 8 stays."""
    semantic = torch.zeros(10, 10, dtype=torch.long)
    masks = torch.zeros(2, 10, 10, dtype=torch.bool)
    masks[0, 0:2, 0:2] = True
    masks[1, 5:9, 5:9] = True
    inst = Instances((10, 10), torch.tensor([[0.0, 0, 2, 2], [5, 5, 9, 9]]), torch.tensor([0.9, 0.4]),
                     torch.tensor([1, 0]), masks)
    pan, segments = merge_panoptic(semantic, inst, instance_score=0.5, overlap=0.5, min_area=8)
    assert [(s["label"], s["area"]) for s in segments] == [(1, 4)]  # the 0.4 one is below the score
    assert int((pan > 0).sum()) == 4
