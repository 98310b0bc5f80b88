"""tools/infer.py, tools/eval.py and detseg.load_model on a small trained checkpoint."""
import json
import os

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from detseg import load_model
from detseg.engine.checkpoint import CheckpointError
from tests.conftest import ROOT, run_script
from tests.tools.test_train_script import TINY

PANOPTIC = "configs/panoptic_fpn_resnet18_shapes.yaml"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A few iterations of the Panoptic FPN recipe (Mask R-CNN + semantic FPN on the panoptic
    shapes): instances, a semantic map and panoptic output."""
    root = tmp_path_factory.mktemp("trained")
    env = {"DETSEG_CACHE": str(root / "cache"), "DETSEG_NO_PROGRESS": "1"}
    out = root / "run"
    r = run_script("tools/train.py", "--config", PANOPTIC, *TINY, "solver.max_iter=4", "solver.eval_period=4",
                   "solver.checkpoint_period=4", "--output-dir", str(out), env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    return out, env


def shapes_root(env) -> str:
    """The fixture's built-in dataset folder (in its own cache)."""
    cache = env["DETSEG_CACHE"]
    return os.path.join(cache, next(d for d in os.listdir(cache) if d.startswith("shapes")))


def test_eval_reproduces_the_numbers_the_trainer_logged(trained, tmp_path):
    out, env = trained
    logged = [json.loads(x) for x in open(out / "metrics.jsonl") if '"AP"' in x][-1]
    r = run_script("tools/eval.py", "--weights", str(out / "best.pth"), "--output", str(tmp_path), env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("AP", "AP50", "segm_AP", "segm_AP50", "mIoU", "pixel_acc", "PQ", "SQ", "RQ", "PQ_th",
                "PQ_st"):
        assert metrics[key] == pytest.approx(logged[key], abs=1e-9), key
    assert "per_class_AP" in r.stdout or "circle" in r.stdout


def test_load_model_api_returns_every_output_in_the_images_pixels(trained):
    out, _ = trained
    predictor = load_model(str(out / "best.pth"), device="cpu")
    image = np.random.default_rng(0).integers(0, 255, (90, 130, 3), dtype=np.uint8)
    result = predictor(image)
    assert set(result) == {"instances", "semantic", "panoptic", "heads"}
    # every head's own output, named after it; the first of each kind also under its kind's key
    assert set(result["heads"]) == {"sem", "det"}
    assert result["heads"]["det"] is result["instances"] and result["heads"]["sem"] is result["semantic"]
    inst = result["instances"]
    assert inst.image_size == (90, 130)
    assert inst.masks is None or inst.masks.shape[1:] == (90, 130)
    assert result["semantic"].shape == (90, 130) and result["panoptic"][0].shape == (90, 130)
    assert predictor.class_names == ["circle", "rectangle", "triangle", "hexagon"]
    assert predictor.stuff_names == ["sky", "ground", "water"]
    ids, segments = result["panoptic"]
    assert sorted(s["id"] for s in segments) == sorted(set(ids.unique().tolist()) - {0})
    for s in segments:
        names = predictor.class_names if s["isthing"] else predictor.stuff_names
        assert s["name"] == names[s["label"]] and s["area"] == int((ids == s["id"]).sum())


def test_infer_writes_coco_panoptic_files_that_score_as_the_evaluator_does(trained, tmp_path):
    """infer.py's panoptic.json + PNGs, scored by the COCO panoptic rules (pq_compute, from the
    files) against the val split's ground truth, give the PQ that the in-memory evaluator gives
    for the same predictor's output."""
    from detseg.data.coco import CocoDataset
    from detseg.evaluation.panoptic_quality import PanopticEvaluator, pq_compute
    from detseg.structures import Batch
    out, env = trained
    root = shapes_root(env)
    ann, gt = (os.path.join(root, "annotations", f"{k}_val.json") for k in ("instances", "panoptic"))
    r = run_script("tools/infer.py", "--weights", str(out / "best.pth"), "--input", os.path.join(root, "val"),
                   "--output", str(tmp_path / "inf"), "--ann-file", ann, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    pan = json.loads((tmp_path / "inf" / "panoptic.json").read_text())
    assert len(pan["annotations"]) == len(os.listdir(tmp_path / "inf" / "panoptic")) == len(pan["images"])
    assert {c["name"] for c in pan["categories"] if not c["isthing"]} == {"sky", "ground", "water"}
    scored = pq_compute(gt, str(tmp_path / "inf" / "panoptic.json"))

    predictor = load_model(str(out / "best.pth"), device="cpu")
    ds = CocoDataset(ann, os.path.join(root, "val"), panoptic=(gt, None))
    ev = PanopticEvaluator(ds)
    for img_id in ds.ids:
        result = predictor(ds.image_path(img_id))
        ev.process(Batch(images=torch.zeros(1, 3, 32, 32, dtype=torch.uint8), image_ids=[img_id]),
                   [result["panoptic"]])
    metrics = ev.evaluate()
    for key, group in (("PQ", "All"), ("PQ_th", "Things"), ("PQ_st", "Stuff")):
        assert scored[group]["pq"] == pytest.approx(metrics[key], abs=1e-12), key


def test_a_checkpoint_that_does_not_fit_is_a_clear_error(trained, tmp_path):
    out, _ = trained
    with pytest.raises(CheckpointError, match="does not fit"):
        load_model(str(out / "best.pth"), config=os.path.join(ROOT, "configs/fcn8s_vgg16_shapes.yaml"))
    foreign = tmp_path / "foreign.pth"
    torch.save({"conv.weight": torch.zeros(3, 3)}, foreign)  # a bare state dict from elsewhere
    with pytest.raises(CheckpointError, match="no 'model'"):
        load_model(str(foreign))
    r = run_script("tools/infer.py", "--weights", str(foreign), "--input", str(tmp_path))
    assert r.returncode == 2 and "foreign.pth" in r.stderr and "Traceback" not in r.stderr


def _write_video(path, frames, size=(128, 96)):
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, size)
    for i in range(frames):
        f = np.full((size[1], size[0], 3), 40, np.uint8)
        cv2.circle(f, (20 + i % 80, 48), 15, (0, 200, 255), -1)
        w.write(f)
    w.release()


def _count_frames(path):
    cap, n = cv2.VideoCapture(str(path)), 0
    while cap.grab():
        n += 1
    cap.release()
    return n


def test_video_in_video_out_with_every_frame(trained, tmp_path):
    out, env = trained
    _write_video(tmp_path / "clip.mp4", 60)
    r = run_script("tools/infer.py", "--weights", str(out / "best.pth"),
                   "--input", str(tmp_path / "clip.mp4"),
                   "--output", str(tmp_path / "out"), "--batch-size", "4", env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    stats = json.loads((tmp_path / "out" / "video_stats.json").read_text())
    assert stats["frames"] == 60 and _count_frames(stats["video"]) == 60


def test_memory_stays_flat_over_a_125_frame_video(trained, tmp_path):
    out, env = trained
    _write_video(tmp_path / "long.mp4", 125)
    # eager: a long video would make the auto backend export to ONNX first (30 s, tested elsewhere)
    r = run_script("tools/infer.py", "--weights", str(out / "best.pth"), "--backend", "eager",
                   "--input", str(tmp_path / "long.mp4"),
                   "--output", str(tmp_path / "out"), env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    memory = json.loads((tmp_path / "out" / "video_stats.json").read_text())["memory"]
    rss = {m["frame"]: m["rss_mb"] for m in memory}
    # after warm-up (frame 50; infer.py records every 25th), 75 more frames may not grow the
    # process by more than 8 MiB: about 110 KiB per frame (the 300-frame version allowed 80)
    assert rss[125] - rss[50] < 8, rss


def test_unreadable_video_is_a_clear_error(trained, tmp_path):
    out, env = trained
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video at all" * 100)
    r = run_script("tools/infer.py", "--weights", str(out / "best.pth"), "--input", str(bad),
                   "--output", str(tmp_path / "out"), env=env)
    assert r.returncode == 1 and "broken.mp4" in r.stderr and "Traceback" not in r.stderr
    assert not any(f.endswith((".mp4", ".avi")) for f in os.listdir(tmp_path / "out"))


def test_folder_of_odd_images_and_a_corrupt_one(trained, tmp_path):
    out, env = trained
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 60), dtype=np.uint8), "L").save(folder / "gray.png")
    Image.fromarray(rng.integers(0, 255, (40, 60, 4), dtype=np.uint8), "RGBA").save(folder / "rgba.png")
    Image.fromarray(rng.integers(0, 65535, (40, 60), dtype=np.uint16)).save(folder / "deep16.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape 60 x 40, shown rotated: upright it is 40 wide, 60 tall
    Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(folder / "rotated.jpg", exif=exif)
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    r = run_script("tools/infer.py", "--weights", str(out / "best.pth"), "--input", str(folder),
                   "--output", str(tmp_path / "out"), "--save-txt", env=env)
    assert r.returncode == 1, r.stderr[-2000:]
    assert "corrupt.jpg" in r.stderr and "1 of 5 inputs" in r.stderr
    sizes = {n: Image.open(tmp_path / "out" / f"{n}.jpg").size for n in ("gray", "rgba", "deep16", "rotated")}
    assert sizes == {"gray": (60, 40), "rgba": (60, 40), "deep16": (60, 40), "rotated": (40, 60)}
    assert len(os.listdir(tmp_path / "out" / "labels")) == 4


def test_results_json_loads_against_the_dataset_it_came_from(trained, tmp_path):
    from pycocotools.coco import COCO
    out, env = trained
    num_val = torch.load(out / "best.pth", weights_only=True)["config"]["data"]["shapes"]["num_val"]
    root = shapes_root(env)
    ann = os.path.join(root, "annotations", "instances_val.json")
    r = run_script("tools/infer.py", "--weights", str(out / "best.pth"), "--input",
                   os.path.join(root, "val"), "--output", str(tmp_path / "out"),
                   "--score-threshold", "0", "--ann-file", ann, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    gt = COCO(ann)
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results and num_val == len(gt.getImgIds())
    dt = gt.loadRes(str(tmp_path / "out" / "results.json"))
    assert set(dt.getImgIds()) <= set(gt.getImgIds())


def test_custom_pipeline_example_runs():
    r = run_script("examples/custom_pipeline.py", "--iterations", "2")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "loss_mask" in r.stdout and "detections" in r.stdout


def test_an_exported_panoptic_model_merges_as_the_eager_one(trained, tmp_path):
    from detseg.export import export
    out, env = trained
    predictor = load_model(str(out / "best.pth"), device="cpu")
    export(predictor, str(tmp_path / "model.pt2"))
    exported = load_model(str(tmp_path / "model.pt2"))
    assert exported.stuff_names == ["sky", "ground", "water"]
    root = shapes_root(env)
    for name in sorted(os.listdir(os.path.join(root, "val")))[:2]:
        (a, sa), (b, sb) = (p(os.path.join(root, "val", name))["panoptic"] for p in (predictor, exported))
        assert (a == b).float().mean() > 0.999  # float rounding may move a pixel at a border
        assert [(s["name"], s["isthing"]) for s in sa] == [(s["name"], s["isthing"]) for s in sb]
