"""detseg.explain: the receptive-field arithmetic, the layer table's counts, and every view on
every head type and backbone of configs/ (tiny inputs, initial weights)."""
import glob
import os

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from detseg.explain import Explainer, FieldTracker, Field, format_layer_table, layer_table, receptive_fields
from detseg.explain.pooling import region_geometry
from detseg.explain.proposals import recall_at
from detseg.explain.saliency import mass_in_box
from tests.conftest import ROOT


def _field_of(net, x):
    with FieldTracker() as t:
        t.mark(x, Field((1.0, 1.0), (1.0, 1.0)))
        y = net(x)
        return t.field(y)


def test_receptive_field_follows_the_textbook_arithmetic():
    x = torch.zeros(1, 3, 32, 32)
    # 3x3 (RF 3) -> 3x3 stride 2 (RF 5, jump 2) -> 2x2 max pool (RF 7, jump 4) -> dilated 3x3 (RF 7 + 2*2*4)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2, padding=1),
                        nn.MaxPool2d(2), nn.Conv2d(4, 4, 3, padding=2, dilation=2))
    assert _field_of(net, x) == Field((23.0, 23.0), (4.0, 4.0))
    # a 4-wide transposed convolution at stride 2 mixes 2 input cells (+1 jump of 4) and halves
    # the jump; a bilinear x2 upsampling mixes 2 cells (+1 jump of 2) and ends at jump 1
    up = nn.Sequential(net, nn.ConvTranspose2d(4, 4, 4, stride=2, padding=1),
                       nn.Upsample(scale_factor=2, mode="bilinear"))
    assert _field_of(up, x) == Field((29.0, 29.0), (1.0, 1.0))
    nearest = nn.Sequential(net, nn.Upsample(scale_factor=2, mode="nearest"))
    assert _field_of(nearest, x) == Field((23.0, 23.0), (2.0, 2.0))
    # global pooling: every output sees the whole map
    gap = nn.Sequential(net, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    f = _field_of(gap, x)
    assert f.stride is None and f.size == (23.0 + 7 * 4.0, 23.0 + 7 * 4.0)  # the 8 x 8 map
    # a residual sum keeps its widest branch; rectangular kernels count per axis
    a, b = nn.Conv2d(3, 4, (1, 5), padding=(0, 2)), nn.Conv2d(3, 4, 3, padding=1)
    with FieldTracker() as t:
        t.mark(x, Field((1.0, 1.0), (1.0, 1.0)))
        assert t.field(a(x) + b(x)) == Field((3.0, 3.0), (1.0, 1.0))
        assert t.field(a(x)) == Field((1.0, 5.0), (1.0, 1.0))


@pytest.mark.parametrize("name", ["resnet18", "lenet5"])
def test_backbone_fields_agree_with_the_heads_margin_arithmetic(name):
    """The tracker against backbones.receptive_field (the chain walk the sliding window's margin
    uses): one number, reached two ways."""
    from detseg.modeling.backbones import build_backbone, receptive_field
    bb = build_backbone(name, weights=None).eval()
    x = torch.zeros(1, 3, 64, 64)
    fields = receptive_fields(bb, lambda: bb(x), x)
    for feature in bb.out_features:
        size, _ = receptive_field(bb, feature)
        assert fields[f"stages.{feature}"].size == (size, size), feature


def test_layer_table_counts_parameters_and_flops():
    from detseg.engine.summary import count_flops
    ex = Explainer.from_config(os.path.join(ROOT, "configs", "fcn8s_resnet18_shapes.yaml"),
                               class_names=["a", "b"])
    batch = ex.batch(np.zeros((64, 96, 3), np.uint8))
    table = layer_table(ex.model, batch)
    rows = {r.name: r for r in table.rows}
    conv = rows["backbone.stages.stem.0"]
    assert conv.type == "Conv2d" and conv.params == 64 * 3 * 7 * 7
    h, w = (s // 2 for s in batch.images.shape[-2:])  # the stem's stride-2 output of the input
    assert conv.output == f"[1, 64, {h}, {w}]" and conv.stride == (2.0, 2.0) and conv.field == (7.0, 7.0)
    assert conv.flops == 2 * 64 * 3 * 7 * 7 * h * w
    assert table.params == sum(p.numel() for p in ex.model.parameters())
    assert table.flops == count_flops(ex.model, batch)["total"]
    assert rows["backbone.stages.c5"].stride == (32.0, 32.0)
    text = format_layer_table(table)
    assert "backbone.stages.stem.0 (Conv2d)" in text and f"Total params: {table.params:,}" in text
    shallow = layer_table(ex.model, batch, max_depth=1)
    assert {r.depth for r in shallow.rows} <= {0, 1} and shallow.params == table.params


def test_region_geometry_is_the_kernels_geometry():
    g = region_geometry((8, 8, 72, 40), stride=8, height=8, width=12, spp_levels=(2, 1),
                        roi_pool_size=2, align_size=2, sampling_ratio=2, aligned=False)
    # SPPNet's window of the box: cells 2..8 across, 2..4 down (floor(x/8)+1, ceil(x/8)-1)
    assert g.spp_bins.shape == (5, 4) and tuple(g.spp_bins[-1]) == (2, 5, 2, 9)
    # Fast R-CNN rounding: cells 1..9 x 1..5, 2 x 2 bins
    assert [tuple(b) for b in g.roi_pool_bins] == [(1, 4, 1, 6), (1, 4, 5, 10), (3, 6, 1, 6), (3, 6, 5, 10)]
    # RoIAlign: 2 x 2 bins of 2 x 2 samples, at 1 + (i + 0.5) * 8 / 4 across and 1 + (i + 0.5) * 4 / 4 down
    assert len(g.align_points) == 16
    assert sorted({round(float(x), 4) for x, _ in g.align_points}) == [2.0, 4.0, 6.0, 8.0]
    assert sorted({round(float(y), 4) for _, y in g.align_points}) == [1.5, 2.5, 3.5, 4.5]


def test_recall_and_saliency_mass():
    gt = torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]])
    props = torch.tensor([[0.0, 0, 10, 11], [50, 50, 60, 60], [19, 19, 30, 30]])
    assert recall_at(props, gt, counts=(1, 2, 3)) == {1: 0.5, 2: 0.5, 3: 1.0}
    heat = np.zeros((20, 40), np.float32)
    heat[5:10, 5:15] = 1.0
    share, area = mass_in_box(heat, (5, 5, 15, 10))
    assert share == 1.0 and area == pytest.approx(50 / 800)


def _parts(path):
    """What a config builds: its backbone (and FPN), each head's type with its pooler and mask
    branch, and the panoptic merge."""
    from detseg.config import load_config
    cfg = load_config(path)
    parts = {("backbone", cfg.model.backbone.name, bool(cfg.model.backbone.fpn))}
    for h in cfg.model.heads.values():
        parts.add(("head", h.type, getattr(getattr(h, "pooler", None), "type", None),
                   getattr(getattr(h, "mask", None), "enabled", None)))
    if cfg.model.panoptic.enabled:
        parts.add(("panoptic",))
    return parts


def _covering_configs():
    """The fewest configs of configs/ (greedily, the shapes ones first: small and quick) that
    hold every backbone and every head type, pooler and mask branch among all of them."""
    paths = sorted(glob.glob(os.path.join(ROOT, "configs", "*.yaml")), key=lambda p: ("shapes" not in p, p))
    parts = {p: _parts(p) for p in paths}
    left, chosen = set().union(*parts.values()), []
    while left:
        best = max(paths, key=lambda p: len(parts[p] & left))  # the first of the best: a shapes one
        chosen.append(os.path.relpath(best, ROOT))
        left -= parts[best]
    return chosen


def _panels(rgb, gap: int = 6):
    """Panels in a row: the pictures between the row's white gaps (``gap`` wholly white columns)."""
    white = (rgb == 255).all(axis=(0, 2))
    runs, n = 0, 0
    for w in white:
        n = n + 1 if w else 0
        runs += n == gap
    return runs + 1


def _photo():
    img = np.full((72, 96, 3), 90, np.uint8)
    cv2.circle(img, (30, 36), 16, (230, 40, 40), -1)
    cv2.rectangle(img, (56, 16), (86, 50), (40, 200, 60), -1)
    return img


@pytest.mark.parametrize("config", _covering_configs())
def test_every_view_runs_on_every_head_type_and_backbone(config, tmp_path):
    # R-CNN warps every proposal to 64 px here (224 in the COCO recipe: 18 s of CNN passes)
    small_crops = ["model.heads.det.warp_size=64"] if os.path.basename(config).startswith("rcnn") else []
    ex = Explainer.from_config(os.path.join(ROOT, config),
                               ["data.min_size_test=64", "data.max_size=96", "data.classify.size=64",
                                "model.backbone.weights=null", *small_crops],
                               class_names=["circle", "square"])
    heads = {type(h).__name__ for h in ex.model.heads.values()}
    image = _photo()
    assert format_layer_table(ex.layers(image)).count("\n") > 5
    applies = {"features": True, "saliency": True, "pooling": "ClassifyHead" not in heads or True,
               "proposals": True, "windows": "SlidingWindowHead" in heads, "upsampling": "FCNHead" in heads}
    for view, expected in applies.items():
        if not expected:
            with pytest.raises(ValueError, match=view.rstrip("s") if view == "windows" else "FCN"):
                ex.pictures(view, image)
            continue
        try:
            pictures = ex.pictures(view, image)
        except ValueError as e:  # the only allowed refusal: nothing detected to explain
            assert view == "saliency" and "detected nothing" in str(e), (view, e)
            continue
        for stem, rgb in pictures.items():
            assert rgb.dtype == np.uint8 and rgb.ndim == 3 and min(rgb.shape[:2]) >= 40, (view, stem)
            assert rgb.std() > 5, (view, stem)  # not blank
        if view == "pooling":
            assert _panels(pictures["pooling"]) == 3
        if view == "saliency":
            assert _panels(pictures["saliency"]) == 2


@pytest.mark.parametrize("config", ["classify_resnet18_shapes", "fcn8s_resnet18_shapes"])
def test_grad_cam_equals_captums(config):
    """Our Grad-CAM against captum's LayerGradCam (an independent implementation) on the same
    layer and score: a classifier's logit, and a semantic head's class logits summed over the
    pixels predicted as that class."""
    import torch.nn.functional as F
    from captum.attr import LayerGradCam

    from detseg.explain import grad_cam
    from detseg.explain.features import find_module
    from detseg.explain.saliency import default_layer
    torch.manual_seed(0)
    ex = Explainer.from_config(os.path.join(ROOT, "configs", config + ".yaml"),
                               ["data.min_size_test=64", "data.max_size=96", "data.classify.size=64"],
                               class_names=["circle", "square", "triangle"])
    batch = ex.batch(_photo())
    model, layer = ex.model, default_layer(ex.model)
    head = next(iter(model.heads.values()))
    pixels = model.preprocess(batch.images)
    if config.startswith("classify"):
        ours = grad_cam(model, batch, ex.class_names, target=1)
        target = 1

        def forward(p):
            return head.logits(model.backbone(p))
    else:
        ours = grad_cam(model, batch, ex.class_names)  # the class predicted on most pixels
        with torch.no_grad():
            labels = head.forward_test(model.backbone(pixels), batch).argmax(1)
        c = ex.class_names.index(ours.target["class"]) + 1
        assert ours.target["pixels"] == int((labels == c).sum()) > 0
        target = 0

        def forward(p):  # [B, 1]: class c's logits summed over the pixels predicted as c
            logits = head.forward_test(model.backbone(p), batch)
            return (logits[:, c] * (labels == c)).flatten(1).sum(1, keepdim=True)
    theirs = LayerGradCam(forward, find_module(model, layer)).attribute(pixels, target=target)
    theirs = F.interpolate(F.relu(theirs), size=pixels.shape[-2:], mode="bilinear", align_corners=False)
    h, w = batch.image_sizes[0]
    theirs = theirs[0, 0, :h, :w]
    theirs = (theirs / theirs.max()).detach().numpy()
    assert ours.method == "grad-cam" and ours.layer == layer
    assert np.abs(ours.heat - theirs).max() < 1e-4


def test_detections_keep_their_class_logits():
    """``detect`` keeps each detection's pre-softmax score: the logit of its own row and class,
    through the score threshold, the empty-box filter and NMS."""
    from detseg.modeling.heads.box_predictor import detect
    torch.manual_seed(0)
    r, k = 12, 3
    logits = torch.randn(r, k + 1) * 3
    scores = torch.softmax(logits, 1)[:, :k]
    # one box per row, far apart (NMS keeps one per row and class), row 0 empty (dropped)
    boxes = torch.stack([torch.tensor([20.0 * i, 0, 20.0 * i + 10 * (i > 0), 10]) for i in range(r)])
    inst = detect(boxes, scores, (40, 400), score_thresh=0.05, nms_thresh=0.5, max_detections=100,
                  logits=logits[:, :k])
    assert 0 < len(inst) < r * k and inst.logits is not None
    rows = (inst.boxes[:, 0] / 20).round().long()
    assert (rows > 0).all()
    assert torch.equal(inst.logits, logits[rows, inst.labels])
    assert torch.equal(inst.scores, scores[rows, inst.labels])
    kept = inst[inst.scores > 0.5].to("cpu").scale(2.0, 2.0, (80, 800))
    assert torch.equal(kept.logits, inst.logits[inst.scores > 0.5])


def test_detection_saliency_explains_the_logit_unless_asked_for_the_probability():
    """Grad-CAM's score for a detection is its class logit (the paper's y^c); the probability's
    map is another one (its gradient also pushes against the other classes)."""
    from detseg.explain import grad_cam
    torch.manual_seed(0)
    ex = Explainer.from_config(os.path.join(ROOT, "configs", "faster_rcnn_resnet18_shapes.yaml"),
                               ["data.min_size_test=64", "data.max_size=96", "model.heads.det.score_thresh=0.0"],
                               class_names=["circle", "square", "triangle", "hexagon"])
    batch = ex.batch(_photo())
    of_logit = grad_cam(ex.model, batch, ex.class_names, method="grad-cam")
    of_prob = grad_cam(ex.model, batch, ex.class_names, method="grad-cam", score="probability")
    assert of_logit.target["explained"] == "logit" and of_prob.target["explained"] == "probability"
    assert of_logit.target["box"] == of_prob.target["box"]
    assert not np.allclose(of_logit.heat, of_prob.heat)
    with pytest.raises(ValueError, match="score must be one of"):
        grad_cam(ex.model, batch, ex.class_names, score="margin")
