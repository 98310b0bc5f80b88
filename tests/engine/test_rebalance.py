"""SMOTE in feature space and the re-fitted last layer (detseg.engine.rebalance, tools/rebalance.py)."""
import json
import os

import numpy as np
import pytest
import torch

from detseg.engine import rebalance
from tests.conftest import ROOT, call_tool


def long_tail_features(seed=0):
    """Three object classes (60 / 12 / 4 vectors) around separate centres, and 100 background."""
    rng = np.random.default_rng(seed)
    centres = np.asarray([[4.0, 0, 0], [0, 4, 0], [0, 0, 4], [-3, -3, -3]])
    counts = [60, 12, 4, 100]
    x = np.concatenate([c + rng.normal(0, 0.5, (n, 3)) for c, n in zip(centres, counts)]).astype(np.float32)
    y = np.concatenate([np.full(n, k) for k, n in enumerate(counts)])
    return x, y


@pytest.mark.parametrize("method", ["smote", "borderline_smote"])
def test_rare_classes_are_raised_to_the_most_frequent_object_class(method):
    x, y = long_tail_features()
    xr, yr = rebalance.oversample(x, y, method, k_neighbors=5, background=3)
    counts = np.bincount(yr)
    assert counts[3] == 100  # background neither raised nor the level
    assert counts[0] == 60 and np.array_equal(xr[: len(x)], x)  # the inputs first, unchanged
    if method == "smote":
        assert counts[1] == counts[2] == 60
    else:  # Borderline-SMOTE draws only from samples near other classes: here none may be
        assert counts[1] <= 60 and counts[2] <= 60
    # every synthetic vector lies between two vectors of its class (inside the class's box)
    for k in (1, 2):
        own, new = x[y == k], xr[len(x):][yr[len(x):] == k]
        assert (new >= own.min(0) - 1e-6).all() and (new <= own.max(0) + 1e-6).all()


def test_smote_refuses_a_class_of_one_and_an_unknown_method():
    x, y = long_tail_features()
    keep = np.concatenate([np.flatnonzero(y != 2), np.flatnonzero(y == 2)[:1]])
    with pytest.raises(ValueError, match="class 2 has 1 feature vector"):
        rebalance.oversample(x[keep], y[keep], background=3)
    with pytest.raises(ValueError, match="smote, borderline_smote"):
        rebalance.oversample(x, y, "adasyn")


def test_refitted_layers_separate_the_classes():
    x, y = long_tail_features()
    softmax = torch.nn.Linear(3, 4)
    rebalance.fit_softmax(softmax, x, y)
    assert (softmax(torch.from_numpy(x)).argmax(1).numpy() == y).mean() > 0.97
    svms = torch.nn.Linear(3, 3)  # K = 3 SVMs, label 3 the background (a negative of each)
    before = svms.weight.detach().clone()
    rebalance.fit_svms(svms, x, y, weight_decay=1e-4)
    assert not torch.equal(before, svms.weight)
    margins = svms(torch.from_numpy(x)).detach()
    for k in range(3):
        assert (margins[y == k, k] > 0).float().mean() > 0.9 and (margins[y != k, k] < 0).float().mean() > 0.9


def test_rebalance_tool_refits_a_region_classifier_and_keeps_the_rest(tmp_path, shapes_data):
    from detseg.config import load_config, to_dict
    from detseg.data.coco import CocoDataset
    from detseg.modeling.model import build_model
    split = shapes_data["train"]
    overrides = [f"data.train.ann_file={split['ann_file']}", f"data.train.image_dir={split['image_dir']}",
                 "data.min_size_test=96", "data.num_workers=0"]
    cfg = load_config(os.path.join(ROOT, "configs", "faster_rcnn_resnet18_shapes.yaml"), overrides)
    ds = CocoDataset(split["ann_file"], split["image_dir"])
    torch.manual_seed(0)
    model = build_model(cfg, ds.num_classes)
    ckpt = tmp_path / "model.pth"
    torch.save({"model": model.state_dict(), "config": to_dict(cfg), "class_names": ds.class_names,
                "label_map": ds.label_map(), "optimizer": {}}, ckpt)
    out = tmp_path / "smote"
    assert call_tool("rebalance", ["--weights", str(ckpt), "--output", str(out), "--negatives-per-image", "4"]) == 0
    report = json.loads((out / "rebalance.json").read_text())
    counts = ds.instance_counts()
    assert report["vectors_before"] == {**{n: c for n, c in zip(ds.class_names, counts) if c},
                                        "background": report["vectors_before"]["background"]}
    assert set(report["vectors_after"][n] for n in ds.class_names) == {max(counts)}
    new = torch.load(out / "model.pth", weights_only=True)
    assert "optimizer" not in new and new["rebalance"]["method"] == "smote"
    old = model.state_dict()
    changed = {k for k in old if not torch.equal(old[k], new["model"][k])}
    assert changed == {"heads.det.predictor.cls_score.weight", "heads.det.predictor.cls_score.bias"}
    # the checkpoint is the user's: an output folder holding it is refused
    assert call_tool("rebalance", ["--weights", str(ckpt), "--output", str(tmp_path)]) == 2
