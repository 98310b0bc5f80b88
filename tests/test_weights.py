"""Imported torchvision Faster / Mask R-CNN weights give torchvision's answers."""
import glob
import os

import numpy as np
import pytest
import torch
import torchvision
from torchvision.models.detection import fasterrcnn_resnet50_fpn, maskrcnn_resnet50_fpn
from torchvision.ops import box_iou

from detseg.api import Predictor, fit_report, load_model
from detseg.config import from_dict
from detseg.data.io import read_image
from detseg.modeling.model import build_model
from detseg.weights import ConversionError, from_torchvision
from tests.conftest import COCO_TINY, run_script


def seeded_torchvision(kind: str):
    """torchvision's model with random weights, made decisive enough that detections and masks
    are not all ties: varied frozen-BN statistics, a wider classifier."""
    torch.manual_seed(0)
    build = maskrcnn_resnet50_fpn if kind == "mask_rcnn" else fasterrcnn_resnet50_fpn
    tv = build(weights=None, weights_backbone=None).eval()
    with torch.no_grad():
        for m in tv.backbone.body.modules():
            if isinstance(m, torchvision.ops.FrozenBatchNorm2d):
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(std=0.1)
                m.running_mean.normal_(std=0.1)
        tv.roi_heads.box_predictor.cls_score.weight.normal_(std=0.01)
    return tv


def images():
    photos = sorted(glob.glob(os.path.join(COCO_TINY, "val2017", "*.jpg")))[:2]
    if photos:
        return [read_image(p) for p in photos]
    rng = np.random.default_rng(0)  # synthetic stand-ins when ../shared is absent
    return [rng.integers(0, 255, (480, 640, 3), dtype=np.uint8),
            rng.integers(0, 255, (400, 300, 3), dtype=np.uint8)]


@pytest.mark.parametrize("kind", ["faster_rcnn", "mask_rcnn"])
def test_converted_weights_give_torchvisions_detections(kind):
    tv = seeded_torchvision(kind)
    ckpt = from_torchvision(tv.state_dict(), kind)
    cfg = from_dict(ckpt["config"])
    model = build_model(cfg, ckpt["num_classes"])
    assert fit_report(model, ckpt["model"]) is None
    model.load_state_dict(ckpt["model"])
    # exact mode: torchvision's convolution kernels and BN arithmetic
    ours = Predictor(model, cfg, ckpt["class_names"], ckpt["label_map"]["cat_ids"], device="cpu",
                     channels_last=False, fold_bn=False)
    for image in images():
        mine = ours(image)["instances"]
        with torch.no_grad():
            theirs = tv([torch.from_numpy(image).permute(2, 0, 1).float() / 255])[0]
        assert len(mine) == len(theirs["boxes"]) > 10
        # same detections in the same order: labels (ours 0-based), boxes, scores
        assert torch.equal(mine.labels + 1, theirs["labels"])
        assert (mine.boxes - theirs["boxes"]).abs().max() <= 1e-4
        assert (mine.scores - theirs["scores"]).abs().max() <= 1e-4
        assert box_iou(mine.boxes, theirs["boxes"]).diag().min() > 0.9999
        if kind == "mask_rcnn":
            prob = theirs["masks"][:, 0]
            differ = mine.masks != (prob >= 0.5)
            # a pixel may only differ where torchvision's own probability is a float-rounding tie
            assert not (differ & ((prob - 0.5).abs() > 1e-5)).any()
            assert mine.masks.sum() > 0


def test_converter_rejects_other_architectures():
    tv = seeded_torchvision("mask_rcnn")
    with pytest.raises(ConversionError, match="mask head"):
        from_torchvision(tv.state_dict(), "faster_rcnn")
    bad = {"backbone.body.conv1.weight": torch.zeros(1), "something.else": torch.zeros(1)}
    with pytest.raises(ConversionError, match="does not know"):
        from_torchvision(bad, "faster_rcnn")


def test_convert_tool_then_infer_writes_coco_names(tmp_path):
    tv = seeded_torchvision("faster_rcnn")
    src = tmp_path / "tv.pth"
    torch.save(tv.state_dict(), src)
    out = tmp_path / "converted.pth"
    r = run_script("tools/convert_weights.py", "--model", "faster_rcnn", "--input", str(src),
                   "--output", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    predictor = load_model(str(out), device="cpu")
    assert predictor.class_names[0] == "person" and predictor.cat_ids[:3] == [1, 2, 3]
    image = images()[0]
    folder = tmp_path / "in"
    folder.mkdir()
    from PIL import Image
    Image.fromarray(image).save(folder / "photo.png")
    r = run_script("tools/infer.py", "--weights", str(out), "--input", str(folder), "--output",
                   str(tmp_path / "out"), "--score-threshold", "0.5", "--save-txt")
    assert r.returncode == 0, r.stderr[-2000:]
    lines = (tmp_path / "out" / "labels" / "photo.txt").read_text().splitlines()
    assert lines  # "cat_id score x1 y1 x2 y2 name", the COCO name drawn on the picture too
    for line in lines:
        cat_id, _, _, _, _, _, name = line.split(" ", 6)
        assert name == predictor.class_names[predictor.cat_ids.index(int(cat_id))]
