"""Per-class figures averaged over rare / common / frequent classes (LVIS's APr / APc / APf)."""
import math

import pytest

from detseg.evaluation.frequency import frequency_groups, split_by_frequency


def test_groups_follow_the_bins_and_means_skip_unmeasured_classes():
    groups = frequency_groups({"a": 1, "b": 10, "c": 11, "d": 100, "e": 101, "f": 5000}, [10, 100])
    assert groups == {"a": "r", "b": "r", "c": "c", "d": "c", "e": "f", "f": "f"}
    out = split_by_frequency({"a": 0.2, "b": float("nan"), "c": 0.4, "d": 0.6, "e": 0.9, "f": 0.7,
                              "background": 1.0}, groups)
    assert out == pytest.approx({"r": 0.2, "c": 0.5, "f": 0.8})
    assert math.isnan(split_by_frequency({"e": 0.5}, groups)["r"])


def test_a_long_tailed_run_reports_each_group(tmp_path, monkeypatch):
    """FCN on long-tailed shapes for two iterations: mIoU_r / _c / _f in metrics.jsonl, each the
    mean of its classes' IoU, grouped by the training images that hold them."""
    import json

    from detseg.data.shapes import ensure_shapes
    from detseg.evaluation.frequency import frequency_groups
    from tests.conftest import call_tool
    monkeypatch.setenv("DETSEG_NO_PROGRESS", "1")
    classes = ["circle", "rectangle", "triangle", "hexagon", "star"]
    common = ["data.shapes.num_train=60", "data.shapes.num_val=12", f"data.shapes.cache_dir={tmp_path}",
              f"data.shapes.classes=[{','.join(classes)}]", "data.shapes.imbalance=30"]
    out = tmp_path / "run"
    assert call_tool("train", [*common, "data.batch_size=2", "data.num_workers=0", "data.min_size_train=[64]",
                               "data.min_size_test=64", "solver.max_iter=2", "solver.warmup_iters=1",
                               "solver.eval_period=2", "solver.checkpoint_period=2", "evaluator.frequency_bins=[5,20]",
                               "--output-dir", str(out)]) == 0
    record = [json.loads(x) for x in open(out / "metrics.jsonl") if "mIoU" in x][-1]
    # training images per class, from the instances file (images holding the class)
    ann = json.load(open(ensure_shapes(0, 60, 12, str(tmp_path), classes, 30.0)["train"]["ann_file"]))
    names = {c["id"]: c["name"] for c in ann["categories"]}
    images = {n: len({a["image_id"] for a in ann["annotations"] if names[a["category_id"]] == n})
              for n in names.values()}
    groups = frequency_groups(images, [5, 20])
    assert set(groups.values()) >= {"f", "r"}  # the tail reaches the rare bin
    iou = json.load(open(out / "diagnostics" / "diagnostics.json"))["diagnostics"]["IoU"]
    for g in ("r", "c", "f"):
        vals = [iou[n] for n, gg in groups.items() if gg == g and iou[n] == iou[n]]
        if vals:
            assert record[f"mIoU_{g}"] == pytest.approx(sum(vals) / len(vals))
        else:
            assert f"mIoU_{g}" not in record
