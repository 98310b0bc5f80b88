"""tools/proposals.py and tools/train.py with detection recipes, as a user runs them."""
import json
import os

import numpy as np
import pytest

from detseg.data.proposal_cache import load_cache
from tests.conftest import run_script
from tests.tools.test_train_script import TINY


@pytest.fixture
def env(tmp_path):
    return {"DETSEG_CACHE": str(tmp_path / "cache"), "DETSEG_NO_PROGRESS": "1"}


def test_proposals_tool_writes_a_cache_with_good_recall(shapes_data, tmp_path, env):
    split = shapes_data["val"]
    out = tmp_path / "props.npz"
    r = run_script("tools/proposals.py", "--ann-file", split["ann_file"], "--image-dir", split["image_dir"],
                   "--out", str(out), "--workers", "0", env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    cache = load_cache(str(out))
    ids = [im["id"] for im in json.load(open(split["ann_file"]))["images"]]
    assert sorted(cache) == sorted(ids)
    assert all(b.dtype == np.float32 and b.shape[1] == 4 and len(b) > 0 for b in cache.values())
    assert np.mean([len(b) for b in cache.values()]) > 50
    recall = float(r.stdout.split("recall@0.5 ")[1].split(",")[0])
    assert recall >= 0.9


def test_proposals_tool_reports_a_missing_annotation_file(tmp_path, env):
    r = run_script("tools/proposals.py", "--ann-file", str(tmp_path / "nope.json"), "--image-dir",
                   str(tmp_path), "--workers", "0", env=env)
    assert r.returncode != 0 and "nope.json" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("config", ["configs/sppnet_resnet18_shapes.yaml",
                                    "configs/faster_rcnn_resnet18_shapes.yaml"])
def test_detection_run_writes_coco_results_and_box_ap(tmp_path, env, config):
    out = tmp_path / "run"
    r = run_script("tools/train.py", "--config", config, *TINY, "solver.max_iter=4",
                   "solver.eval_period=4", "solver.checkpoint_period=4", "--output-dir", str(out), env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    evals = [json.loads(x) for x in open(out / "metrics.jsonl") if '"AP"' in x]
    assert len(evals) == 1 and 0 <= evals[0]["AP50"] <= 1
    results = json.loads((out / "coco_results.json").read_text())
    assert isinstance(results, list)
    assert all(r_["category_id"] in (1, 2, 5, 9) for r_ in results)  # the dataset's own ids
    if "sppnet" in config:  # selective search ran once and was cached beside the annotations
        root = os.path.join(env["DETSEG_CACHE"])
        caches = [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if f.startswith("proposals_")]
        assert len(caches) == 2
