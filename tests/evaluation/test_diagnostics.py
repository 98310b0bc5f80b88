"""Confusion matrices, PR and F1 curves: what a detector gets wrong, cell by cell."""
import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detseg.evaluation.coco import evaluate_results
from detseg.evaluation.diagnostics import confusion_matrix


def _gt(shapes_data):
    ann = shapes_data["val"]["ann_file"]
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(ann)
    return ann, coco, sorted(coco.getCatIds())


def _as_results(coco, score=1.0):
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": list(a["bbox"]),
             "score": score} for a in coco.dataset["annotations"]]


def test_ground_truth_fed_back_is_diagonal_and_a_wrong_class_lands_off_it(shapes_data):
    ann, coco, cat_ids = _gt(shapes_data)
    results = _as_results(coco)
    ids = coco.getImgIds()
    conf = confusion_matrix(coco, results, ids, cat_ids)
    per_class = np.bincount([cat_ids.index(a["category_id"]) for a in coco.dataset["annotations"]],
                            minlength=len(cat_ids))
    assert np.array_equal(conf, np.diag(np.append(per_class, 0)))

    wrong = dict(results[0])
    true = cat_ids.index(wrong["category_id"])
    guess = (true + 1) % len(cat_ids)
    wrong["category_id"] = cat_ids[guess]
    conf = confusion_matrix(coco, [wrong, *results[1:]], ids, cat_ids)
    assert conf[true, guess] == 1 and conf[true, true] == per_class[true] - 1
    # A detection far from any object is a false positive (background row); a detection below
    # the score threshold does not count, so its object is missed (background column).
    stray = {**results[0], "bbox": [0.0, 0.0, 2.0, 2.0]}
    low = {**results[1], "score": 0.1}
    conf = confusion_matrix(coco, [stray, low, *results[2:], results[0]], ids, cat_ids, score_threshold=0.5)
    assert conf[-1, cat_ids.index(stray["category_id"])] == 1
    assert conf[cat_ids.index(low["category_id"]), -1] == 1


def test_pr_curve_end_points_are_the_coco_evaluators_recall(shapes_data):
    """Detections jittered, some dropped, false positives added: each class's last recall equals
    pycocotools' recall at IoU 0.5 (100 detections, all areas)."""
    ann, coco, cat_ids = _gt(shapes_data)
    rng = np.random.default_rng(0)
    results = []
    for a in coco.dataset["annotations"]:
        if rng.random() < 0.2:
            continue  # missed
        x, y, w, h = a["bbox"]
        jitter = rng.normal(0, 0.15, 4) * [w, h, w, h]
        results.append({"image_id": a["image_id"], "category_id": a["category_id"],
                        "bbox": [x + jitter[0], y + jitter[1], max(1, w + jitter[2]), max(1, h + jitter[3])],
                        "score": float(rng.uniform(0.3, 1))})
        if rng.random() < 0.3:  # a duplicate or a confusion, lower scored
            results.append({**results[-1], "category_id": int(rng.choice(cat_ids)),
                            "score": float(rng.uniform(0, 0.5))})
    names = [coco.cats[c]["name"] for c in cat_ids]
    stats = evaluate_results(ann, results, class_names=names, diagnostics_threshold=0.5)
    diag = stats["diagnostics"]
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(coco, coco.loadRes(results), "bbox")
        ev.evaluate()
        ev.accumulate()
    for k, name in enumerate(names):
        curve = diag["pr_curves"][name]
        assert curve["recall"][-1] == pytest.approx(ev.eval["recall"][0, k, 0, -1], abs=1e-12)
        assert all(b <= a + 1e-12 for a, b in zip(curve["scores"], curve["scores"][1:]))
        best = diag["f1"][name]["best"]
        p, r = np.array(curve["precision"]), np.array(curve["recall"])
        assert best["f1"] == pytest.approx((2 * p * r / np.maximum(p + r, 1e-12)).max())
    assert np.asarray(diag["confusion"]).sum() > 0
    json.dumps(diag)  # plain values, for metrics.json


def test_diagnostics_figures_are_written(shapes_data, tmp_path):
    import cv2

    from detseg.evaluation.semseg import SemSegEvaluator
    from detseg.visualize import write_diagnostics
    ann, coco, cat_ids = _gt(shapes_data)
    stats = evaluate_results(ann, _as_results(coco), diagnostics_threshold=0.5)
    sem = SemSegEvaluator(3, ["a", "b"])
    import torch
    sem.update(torch.tensor([0, 1, 2, 2]), torch.tensor([0, 1, 1, 2]))
    semantic = sem.compute()
    assert semantic["diagnostics"]["confusion"] == [[1, 0, 0], [0, 1, 1], [0, 0, 1]]
    paths = write_diagnostics({"diagnostics": stats["diagnostics"],
                               "seg_diagnostics": semantic["diagnostics"]}, str(tmp_path))
    names = sorted(p.split("/")[-1] for p in paths)
    assert names == ["confusion.png", "f1_threshold.png", "pr_curves.png", "seg_semantic_confusion.png"]
    assert all(cv2.imread(p) is not None for p in paths)
