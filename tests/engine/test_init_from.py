"""Fine-tuning starts (model.init_from): what loads, how class rows move by name, what is refused."""
import os

import pytest
import torch
import torchvision

from detseg.config import load_config
from detseg.engine.checkpoint import CheckpointError
from detseg.engine.init_from import InitError, init_from
from detseg.modeling.class_layout import (BG_FIRST, BOX_DELTAS, PER_CLASS, SCORES_BG_LAST, class_axes,
                                          layout_size, source_rows)
from detseg.modeling.model import build_model

OLD = ["circle", "rectangle", "triangle", "hexagon"]
NEW = ["Triangle", "star", "circle"]  # two shared (one in other case), one new, order changed
SOURCE = [2, None, 0]  # NEW[j] <- OLD[SOURCE[j]]
FASTER = "configs/faster_rcnn_resnet18_shapes.yaml"


def model_of(config, classes, seed, *overrides):
    torch.manual_seed(seed)
    return build_model(load_config(config, list(overrides)), len(classes)).eval()


def save(tmp_path, model, classes, name="old.pth"):
    path = str(tmp_path / name)
    torch.save({"model": model.state_dict(), "class_names": classes, "iteration": 7}, path)
    return path


def test_source_rows_of_each_layout():
    # old K = 4; new classes take old classes 3, none, 1
    src = [3, None, 1]
    assert source_rows(SCORES_BG_LAST, src, 4).tolist() == [3, -1, 1, 4]
    assert source_rows(PER_CLASS, src, 4).tolist() == [3, -1, 1]
    assert source_rows(BOX_DELTAS, src, 4).tolist() == [12, 13, 14, 15, -1, -1, -1, -1, 4, 5, 6, 7]
    assert source_rows(BG_FIRST, src, 4).tolist() == [0, 4, -1, 2]
    sliding = SCORES_BG_LAST + BOX_DELTAS  # K + 1 logits then 4K deltas in one conv
    assert source_rows(sliding, [1], 2).tolist() == [1, 2, 7, 8, 9, 10]


@pytest.mark.parametrize("config,overrides", [
    (FASTER, []), ("configs/mask_rcnn_resnet18_fpn_shapes.yaml", []),
    ("configs/rcnn_resnet18_shapes.yaml", ["model.heads.det.classifier=svm"]),
    ("configs/sliding_window_resnet18_shapes.yaml", []), ("configs/fcn8s_resnet18_shapes.yaml", []),
])
def test_every_class_dependent_tensor_is_declared(config, overrides):
    """A tensor whose shape changes with the class count and is not declared would silently be
    re-initialised (or, worse, copied by position) when fine-tuning on other classes."""
    a, b = model_of(config, OLD[:3], 0, *overrides), model_of(config, OLD + ["star"], 0, *overrides)
    sa, sb = a.state_dict(), b.state_dict()
    axes = class_axes(a)
    assert {k for k in sa if sa[k].shape != sb[k].shape} == set(axes)
    for key, dims in axes.items():
        for d, layout in dims.items():
            assert (sa[key].shape[d], sb[key].shape[d]) == (layout_size(layout, 3), layout_size(layout, 5))


def test_report_names_what_loaded_and_class_rows_move_by_name(tmp_path):
    old = model_of(FASTER, OLD, 0)
    state = old.state_dict()
    path = str(tmp_path / "old.pth")
    dropped = "heads.det.fc.2.bias"
    file_state = {k: v for k, v in state.items() if k != dropped}
    file_state["heads.det.extra.weight"] = torch.zeros(3)
    torch.save({"model": file_state, "class_names": OLD}, path)
    new = model_of(FASTER, NEW, 1)
    fresh = {k: v.clone() for k, v in new.state_dict().items()}
    report = init_from(new, path, NEW)

    axes = set(class_axes(new))
    assert set(report.remapped) == axes
    assert set(report.loaded) == set(state) - axes - {dropped}
    assert report.reinitialised == {dropped: "not in the file"}
    assert report.ignored == {"heads.det.extra.weight": "not in this model"}
    assert report.class_sources == {"Triangle": "triangle", "star": None, "circle": "circle"}
    now = new.state_dict()
    assert torch.equal(now[dropped], fresh[dropped])
    assert all(torch.equal(now[k], state[k]) for k in report.loaded)
    # Classifier: rows of matched classes and background bit-identical to the file's; the new
    # class keeps its fresh initialisation.
    w, w_old, w_fresh = (s["heads.det.predictor.cls_score.weight"] for s in (now, state, fresh))
    assert torch.equal(w[0], w_old[2]) and torch.equal(w[2], w_old[0]) and torch.equal(w[3], w_old[4])
    assert torch.equal(w[1], w_fresh[1]) and not torch.equal(w[1], w_old[1])
    d, d_old, d_fresh = (s["heads.det.predictor.bbox_pred.weight"] for s in (now, state, fresh))
    assert torch.equal(d[0:4], d_old[8:12]) and torch.equal(d[8:12], d_old[0:4])
    assert torch.equal(d[4:8], d_fresh[4:8])


def test_heads_give_the_old_outputs_for_matched_classes(tmp_path):
    """Behaviour, not just tensors: the fine-tuning start scores matched classes as the old
    model did (the outputs of the rows that moved; each head's own forward)."""
    # Sliding window: its classifier conv outputs (K + 1) logits then 4K deltas.
    cfg = "configs/sliding_window_resnet18_shapes.yaml"
    old, new = model_of(cfg, OLD, 0), model_of(cfg, NEW, 1)
    init_from(new, save(tmp_path, old, OLD), NEW)
    x = torch.randn(1, new.heads.det.reduce[0].out_channels, 12, 12)
    o, n = old.heads.det.classifiers[0](x), new.heads.det.classifiers[0](x)
    for j, s in enumerate(SOURCE):
        if s is not None:
            torch.testing.assert_close(n[:, j], o[:, s], rtol=0, atol=1e-6)
            torch.testing.assert_close(n[:, 4 + 4 * j:8 + 4 * j], o[:, 5 + 4 * s:9 + 4 * s],
                                       rtol=0, atol=1e-6)
    torch.testing.assert_close(n[:, 3], o[:, 4], rtol=0, atol=1e-6)  # background

    # FCN-8s: score layers and deconvolutions both carry classes; a model whose deconvolutions
    # are still bilinear (no cross-class terms) gives the very same maps for matched classes.
    cfg = "configs/fcn8s_resnet18_shapes.yaml"
    old, new = model_of(cfg, OLD, 0), model_of(cfg, NEW, 1)
    with torch.no_grad():  # trained-looking skips (they start at zero)
        for layer in old.heads.seg.score_skips:
            layer.weight.normal_(std=0.01)
    init_from(new, save(tmp_path, old, OLD, "fcn.pth"), NEW)
    images = torch.randint(0, 255, (1, 3, 96, 128), dtype=torch.uint8)
    batch = {"images": images, "image_sizes": [(96, 128)], "image_ids": [1]}
    with torch.no_grad():
        lo, ln = old(batch)["seg"], new(batch)["seg"]
    for j, s in enumerate(SOURCE):
        if s is not None:
            torch.testing.assert_close(ln[:, 1 + j], lo[:, 1 + s], rtol=0, atol=1e-4)
    torch.testing.assert_close(ln[:, 0], lo[:, 0], rtol=0, atol=1e-4)

    # Mask R-CNN: the mask predictor's channel of each matched class; R-CNN's per-class SVMs.
    cfg = "configs/mask_rcnn_resnet18_fpn_shapes.yaml"
    old, new = model_of(cfg, OLD, 0), model_of(cfg, NEW, 1)
    init_from(new, save(tmp_path, old, OLD, "mask.pth"), NEW)
    x = torch.randn(2, new.heads.det.mask_head.predictor.in_channels, 28, 28)
    o, n = old.heads.det.mask_head.predictor(x), new.heads.det.mask_head.predictor(x)
    torch.testing.assert_close(n[:, [0, 2]], o[:, [2, 0]], rtol=0, atol=1e-6)
    cfg, svm = "configs/rcnn_resnet18_shapes.yaml", "model.heads.det.classifier=svm"
    old, new = model_of(cfg, OLD, 0, svm), model_of(cfg, NEW, 1, svm)
    init_from(new, save(tmp_path, old, OLD, "svm.pth"), NEW)
    assert torch.equal(new.heads.det.svm.weight[[0, 2]], old.heads.det.svm.weight[[2, 0]])


def test_class_map_renames_and_is_checked(tmp_path):
    old = model_of(FASTER, OLD, 0)
    path = save(tmp_path, old, OLD)
    new = model_of(FASTER, ["ball", "box"], 1)
    report = init_from(new, path, ["ball", "box"], {"ball": "circle", "box": "Rectangle"})
    assert report.class_sources == {"ball": "circle", "box": "rectangle"}
    w = new.heads.det.predictor.cls_score.weight
    assert torch.equal(w, old.heads.det.predictor.cls_score.weight[[0, 1, 4]])
    with pytest.raises(InitError, match="'cube' is not a class of this dataset"):
        init_from(new, path, ["ball", "box"], {"cube": "circle"})
    with pytest.raises(InitError, match="'sphere' .* is not a class of the init_from file"):
        init_from(new, path, ["ball", "box"], {"ball": "sphere"})


def test_plain_state_dicts_without_class_names(tmp_path):
    from safetensors.torch import save_file
    old = model_of(FASTER, OLD, 0)
    path = str(tmp_path / "plain.safetensors")
    save_file({k: v.contiguous() for k, v in old.state_dict().items()}, path)
    same = model_of(FASTER, ["a", "b", "c", "d"], 1)  # same count: rows taken by position
    report = init_from(same, path, ["a", "b", "c", "d"])
    assert not report.remapped and not report.reinitialised
    assert all(torch.equal(v, old.state_dict()[k]) for k, v in same.state_dict().items())
    other = model_of(FASTER, ["a", "b"], 1)  # another count and no names: nothing to match
    report = init_from(other, path, ["a", "b"])
    assert set(report.reinitialised) == set(class_axes(other))
    assert "names no classes" in report.reinitialised["heads.det.predictor.cls_score.weight"]


def test_unrelated_or_unsafe_files_are_refused(tmp_path):
    new = model_of(FASTER, NEW, 1)
    before = {k: v.clone() for k, v in new.state_dict().items()}
    other = model_of(FASTER, OLD, 0, "model.backbone.name=resnet50")
    path = str(tmp_path / "r50.pth")
    torch.save({"model": other.state_dict(), "class_names": OLD,
                "config": {"model": {"backbone": {"name": "resnet50"}}}}, path)
    with pytest.raises(InitError, match="a resnet50 model; this config's backbone is resnet18"):
        init_from(new, path, NEW, backbone="resnet18")
    # Without a config to tell, shapes decide: ImageNet classifier weights fit no detseg name.
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "imagenet.pth")
    with pytest.raises(InitError, match=r"only 0% of the model's backbone weights \(0 of \d+ tensors\) "
                                        r"fit.*model.backbone.weights instead"):
        init_from(new, str(tmp_path / "imagenet.pth"), NEW)
    torchvision_like = {"backbone.body.conv1.weight": torch.zeros(64, 3, 7, 7),
                        "roi_heads.box_predictor.cls_score.weight": torch.zeros(91, 1024)}
    torch.save(torchvision_like, tmp_path / "tv.pth")
    with pytest.raises(InitError, match="convert it first with tools/convert_weights.py"):
        init_from(new, str(tmp_path / "tv.pth"), NEW)
    assert all(torch.equal(v, before[k]) for k, v in new.state_dict().items())  # untouched

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"model": {"x": Payload()}}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="refused"):
        init_from(new, str(tmp_path / "evil.pth"), NEW)
    assert not marker.exists()
    with pytest.raises(InitError, match="file not found"):
        init_from(new, str(tmp_path / "missing.pth"), NEW)


def test_torchvision_faster_rcnn_restricted_to_three_coco_classes(tmp_path):
    """A converted (seeded, untrained) torchvision Faster R-CNN fine-tuned on person, car, dog:
    at iteration 0 the classifier's weights for those rows and background are bit-identical to
    torchvision's (background moved from first to last), so are the class-specific box
    regressors, and the logits and decoded boxes they give on the same RoI features equal
    torchvision's predictor's for those classes (to 1e-6: a 4-row matrix product may sum in
    another order than a 91-row one)."""
    from detseg.weights import from_torchvision
    torch.manual_seed(0)
    tv = torchvision.models.detection.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None).eval()
    converted = from_torchvision(tv.state_dict(), "faster_rcnn")
    path = str(tmp_path / "coco.pth")
    torch.save(converted, path)
    classes = ["person", "car", "dog"]
    ids = [converted["class_names"].index(c) + 1 for c in classes]  # torchvision labels: 1, 3, 18
    cfg = load_config("configs/faster_rcnn_r50_fpn_coco.yaml", ["model.backbone.weights=null"])
    model = build_model(cfg, 3).eval()
    report = init_from(model, path, classes)
    assert report.class_sources == dict(zip(classes, classes)) and not report.reinitialised
    tv_pred, pred = tv.roi_heads.box_predictor, model.heads.det.predictor
    assert torch.equal(pred.cls_score.weight, tv_pred.cls_score.weight[ids + [0]])
    assert torch.equal(pred.cls_score.bias, tv_pred.cls_score.bias[ids + [0]])
    rows = [4 * i + r for i in ids for r in range(4)]
    assert torch.equal(pred.bbox_pred.weight, tv_pred.bbox_pred.weight[rows])
    x = torch.randn(16, 1024)
    with torch.no_grad():
        logits, deltas = pred(x)
        tv_logits, tv_deltas = tv_pred(x)
    torch.testing.assert_close(logits, tv_logits[:, ids + [0]], rtol=0, atol=1e-6)
    proposals = torch.tensor([[10.0, 20.0, 110.0, 90.0]]).expand(16, 4)
    boxes = model.heads.det.coder.decode(deltas, proposals).reshape(16, 3, 4)
    tv_boxes = tv.roi_heads.box_coder.decode(tv_deltas, [proposals]).reshape(16, 91, 4)[:, ids]
    torch.testing.assert_close(boxes, tv_boxes, rtol=0, atol=1e-4)
    # Everything else of the detector loaded as it was.
    state = model.state_dict()
    assert all(torch.equal(state[k], converted["model"][k]) for k in report.loaded)
