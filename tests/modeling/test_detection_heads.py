"""Every detection head learns a single image perfectly (AP50 = 1.0) through the full stack:
config → build_model → Model.forward → COCO evaluation with pycocotools."""
import pytest
import torch

from detseg.config import ConfigError, load_config
from detseg.data import shapes
from detseg.data.coco import CocoDataset
from detseg.data.transforms import collate, eval_transform
from detseg.evaluation.coco import COCOEvaluator
from detseg.modeling.backbones import build_backbone, context_margin, receptive_field
from detseg.modeling.heads.sliding_window import SlidingWindowHead
from detseg.modeling.model import build_model
from detseg.structures import Batch
from tests.conftest import overfit


@pytest.fixture(scope="module")
def one_image(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("one") / "ds")
    split = shapes.generate(root, seed=5, num_train=1, num_val=0)["train"]
    ds = CocoDataset(split["ann_file"], split["image_dir"], transform=eval_transform(128, 288))
    batch = collate([ds[0]])
    assert len(batch["targets"][0]["boxes"]) >= 3  # several objects, two classes at least
    return split, ds, batch


@pytest.mark.parametrize("recipe,extra", [
    ("sliding_window", []),
    ("rcnn", []),
    ("rcnn", ["model.heads.det.classifier=svm"]),
    ("sppnet", []),
    ("fast_rcnn", []),
    ("faster_rcnn", []),
])
def test_head_overfits_one_image_to_ap50_one(one_image, recipe, extra):
    split, ds, batch = one_image
    # Frozen (identity) BN: training and eval compute the same function on a batch of one.
    cfg = load_config(f"configs/{recipe}_resnet18_shapes.yaml", ["model.backbone.norm=frozen_bn", *extra])
    torch.manual_seed(0)
    model = build_model(cfg, ds.num_classes)
    (head,) = cfg.model.heads
    ap50 = []

    def check(out):
        ev = COCOEvaluator(split["ann_file"], ds.cat_ids, ds.class_names)
        ev.process(batch, out[head])
        ap50.append(ev.evaluate()["AP50"])
        return ap50[-1] == 1.0

    assert overfit(model, batch, 200, check), ap50


@pytest.mark.parametrize("scales", [(1,), (1, 2, 3)])
def test_conv_and_naive_sliding_windows_give_the_same_scores(scales):
    torch.manual_seed(0)
    bb = build_backbone("resnet18").eval()
    head = SlidingWindowHead(in_shapes=bb.output_shape(), num_classes=3, feature="c3",
                             margin=context_margin(bb, "c3", 8), window_sizes=(16, 40),
                             aspect_ratios=(0.5, 1.0), scales=scales).eval()
    assert len(head.shapes) == 4 * len(scales) and len(head.classifiers) == 4
    for clf in head.classifiers:  # scores far from uniform, so equality is not trivially met
        torch.nn.init.normal_(clf[2].weight, std=0.3)
    pixels = torch.randn(2, 3, 64, 96)
    batch = Batch(images=pixels, pixels=pixels, image_sizes=[(64, 96), (52, 70)])
    with torch.no_grad():
        conv = head.score_windows(batch, bb)
        head.mode = "naive"
        naive = head.score_windows(batch, bb)
    for (b1, s1), (b2, s2), (h, w) in zip(conv, naive, batch["image_sizes"]):
        assert torch.equal(b1, b2) and len(b1) > 50
        assert (b1[:, 0] >= 0).all() and (b1[:, 2] <= w).all() and (b1[:, 3] <= h).all()
        assert s1.abs().max() > 1
        assert (s1 - s2).abs().max() <= 1e-4


def test_scaled_window_is_the_base_classifier_on_block_averaged_cells():
    torch.manual_seed(0)
    bb = build_backbone("resnet18").eval()
    head = SlidingWindowHead(in_shapes=bb.output_shape(), num_classes=2, feature="c3", margin=0,
                             window_sizes=(24,), aspect_ratios=(1.0, 2.0), scales=(1, 2, 3)).eval()
    assert head.shapes == [(3, 3), (4, 2), (6, 6), (8, 4), (9, 9), (12, 6)]
    assert len(head.classifiers) == 2  # one per base shape, shared by its three scales
    fmap = torch.randn(1, 64, 20, 17)
    with torch.no_grad():
        for j, ((kh, kw), (b, scale)) in enumerate(zip(head.shapes, head.shape_classifier)):
            out = head.classify(fmap, j)
            assert out.shape[-2:] == (20 - kh + 1, 17 - kw + 1)
            y, x = 5, 2  # one window: its cells averaged in scale x scale blocks, then the base net
            cells = torch.nn.functional.avg_pool2d(fmap[:, :, y:y + kh, x:x + kw], scale)
            torch.testing.assert_close(out[:, :, y, x], head.classifiers[b](cells)[:, :, 0, 0],
                                       atol=1e-5, rtol=0)


def test_window_miner_takes_the_most_object_like_negatives_then_random_ones():
    bb = build_backbone("resnet18")
    head = SlidingWindowHead(in_shapes=bb.output_shape(), num_classes=2, feature="c3", margin=0,
                             window_sizes=(24,), hard_negative_fraction=0.5)
    n = 40
    logits = torch.zeros(n, 3)
    logits[:, 2] = 5.0  # confidently background ...
    logits[[3, 7, 11, 30], 0] = torch.tensor([9.0, 7.0, 8.0, 6.0])  # ... except these four
    matched = torch.full((n,), -1)  # BACKGROUND
    matched[[7, 20]] = 0  # foreground (never a negative even if hard)
    matched[21] = -2  # ignored
    torch.manual_seed(0)
    picked = head.mine_negatives(logits, matched, 6)
    assert picked[:3].tolist() == [3, 11, 30]  # the three hardest negatives, hardest first
    assert len(set(picked.tolist())) == 6
    assert not set(picked.tolist()) & {7, 20, 21}
    with pytest.raises(ValueError, match="hard_negative_fraction"):
        SlidingWindowHead(in_shapes=bb.output_shape(), num_classes=2, feature="c3", margin=0,
                          hard_negative_fraction=1.5)


def test_receptive_field_of_resnet18():
    # stem: conv7/2 + pool3/2 -> 11 px; each 3x3 conv adds 2 * stride. The 1x1 shortcuts add none.
    bb = build_backbone("resnet18")
    assert receptive_field(bb, "c2") == (43, 3 + 1 * 2 + 4 * 4)
    size, pad = receptive_field(bb, "c4")
    assert size == 211


@pytest.mark.parametrize("pooler", ["spp", "roi_pool", "roi_align"])
def test_region_head_pooler_choice(one_image, pooler):
    """A region head's pooler picks the pooling op; the head trains and predicts with each."""
    from detseg.ops import MultiScaleRoIAlign, SpatialPyramidPool
    _, ds, batch = one_image
    section = {"spp": "{type: spp, levels: [4, 2, 1]}", "roi_pool": "{type: roi_pool, output_size: 4}",
               "roi_align": "{type: roi_align, output_size: 4}"}[pooler]
    cfg = load_config("configs/faster_rcnn_resnet18_shapes.yaml", [f"model.heads.det.pooler={section}"])
    torch.manual_seed(0)
    model = build_model(cfg, ds.num_classes)
    head = model.heads["det"]
    expected = {"spp": (SpatialPyramidPool, 21), "roi_pool": (SpatialPyramidPool, 16),
                "roi_align": (MultiScaleRoIAlign, 16)}[pooler]
    assert isinstance(head.pooler.pool, expected[0])
    assert head.fc[0].in_features == 128 * expected[1]  # p3 channels x bins
    losses = model(batch)
    assert torch.isfinite(losses["loss"])
    losses["loss"].backward()
    model.eval()
    with torch.no_grad():
        assert len(model(batch)["det"]) == 1


def test_sampled_windows_recomputed_alone_match_the_dense_scores_and_gradients():
    """Training recomputes only the sampled windows (``classify_at``): the same outputs as the
    dense convolutions at those cells, and the same gradients for the map and every weight."""
    torch.manual_seed(0)
    bb = build_backbone("resnet18")
    head = SlidingWindowHead(in_shapes=bb.output_shape(), num_classes=3, feature="c3", margin=0,
                             window_sizes=(16, 24), aspect_ratios=(0.5, 1.0), scales=(1, 2, 3))
    for clf in head.classifiers:
        torch.nn.init.normal_(clf[2].weight, std=0.3)
    fmap = torch.randn(2, 64, 21, 18, requires_grad=True)
    scored = head._score_dense(fmap, [(21 * 8, 18 * 8), (15 * 8, 17 * 8)])
    picks, dense = [], []
    for i, (boxes, out, cells) in enumerate(scored):
        sel = torch.randperm(len(boxes))[:40]  # windows of every shape, in no particular order
        picks.append(torch.cat([torch.full((40, 1), i), cells[sel]], dim=1))
        dense.append(out[sel])
    image, shape, gy, gx = torch.cat(picks).unbind(1)
    assert len(torch.unique(shape)) > 6
    dense = torch.cat(dense)
    sparse = head.classify_at(fmap, image, shape, gy, gx)
    torch.testing.assert_close(sparse, dense, atol=1e-5, rtol=1e-5)
    weights = torch.randn_like(dense)
    params = [fmap, *head.classifiers.parameters()]
    g_dense = torch.autograd.grad((dense * weights).sum(), params)
    g_sparse = torch.autograd.grad((sparse * weights).sum(), params)
    for a, b in zip(g_sparse, g_dense):
        assert b.abs().max() > 0
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_sliding_window_context_margin_setting():
    """``context_margin`` sets the padding the backbone sees (rounded up to the stride); unset,
    the receptive field's reach, which keeps the naive and convolutional modes equal."""
    def head(*overrides):
        cfg = load_config("configs/sliding_window_resnet18_shapes.yaml", list(overrides))
        return build_model(cfg, 4).heads["det"]

    bb = build_backbone("resnet18")
    full = context_margin(bb, "c3", 8)
    assert head("model.heads.det.context_margin=null").margin == -(-full // 8) * 8 == 56
    assert head("model.heads.det.context_margin=12").margin == 16
    assert head("model.heads.det.context_margin=0").margin == 0
    pixels = torch.zeros(1, 3, 64, 64)
    assert head("model.heads.det.context_margin=16").padded_pixels(pixels, [(64, 64)]).shape[-1] == 96
    with pytest.raises(ConfigError, match=r"'model.heads.det.context_margin' .*must be >= 0, got -8"):
        head("model.heads.det.context_margin=-8")  # refused as the config loads
    with pytest.raises(ValueError, match="context margin must be >= 0"):
        SlidingWindowHead(in_shapes=bb.output_shape(), num_classes=2, feature="c3", margin=-8)
