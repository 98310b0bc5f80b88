"""Every benchmark script runs in its --quick form, writes its figures as JSON and leaves the
measured figures in BENCHMARKS.md alone."""
import io
import json
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_script


@pytest.mark.parametrize("script,keys", [
    ("benchmarks/loader.py", ["images_per_s.workers_0", "images_per_s.workers_2"]),
    ("benchmarks/roi_pool.py", ["backend"]),
    ("benchmarks/roi_align.py", ["speedup", "speedup_one_thread", "ms"]),
    ("benchmarks/step_time.py", ["seconds_per_step", "ratios"]),
    ("benchmarks/fcn_shapes.py", ["mIoU", "pixel_acc", "wall_s"]),
    ("benchmarks/lineage.py", ["speedup", "ms", "naive_max_abs_diff"]),
    ("benchmarks/detection_shapes.py", ["sppnet"]),
    ("benchmarks/mask_shapes.py", ["segm_AP", "segm_AP50", "AP"]),
    ("benchmarks/panoptic_shapes.py", ["PQ", "PQ_th", "PQ_st", "seeds"]),
    ("benchmarks/paste_masks.py", ["speedup", "mismatches"]),
    ("benchmarks/vs_torchvision.py", ["seconds", "speedup", "agreement"]),
    ("benchmarks/finetune.py", ["finetune_frozen", "scratch", "speedup"]),
    ("benchmarks/vs_torchvision_training.py", ["detseg", "torchvision", "speedup", "ap_gain", "runs"]),
    ("benchmarks/host_overhead.py", ["us", "ratio", "backend"]),
    ("benchmarks/classification.py", ["ResNet-18, shapes", "LeNet-5, digits"]),
    ("benchmarks/architectures.py", ["rows", "budget_s"]),
    ("benchmarks/quickstart.py", ["runs"]),
    ("benchmarks/saliency.py", ["rows", "checkpoint_box_AP"]),
    ("benchmarks/imbalance.py", ["tasks"]),
    ("benchmarks/from_classifier.py", ["sliding_window", "fcn"]),
    ("benchmarks/trimmed_conv.py", ["native", "avx2"]),
])
def test_benchmark_quick_run(tmp_path, tmp_path_factory, script, keys):
    out = tmp_path / "figures.json"
    env = {"DETSEG_CACHE": str(tmp_path_factory.getbasetemp() / "cache")}
    md = Path(ROOT) / "BENCHMARKS.md"
    before = md.read_bytes()
    r = run_script(script, "--quick", "--json", str(out), env=env)  # no --no-write: --quick implies it
    assert r.returncode == 0, r.stderr[-2000:]
    assert md.read_bytes() == before, f"{script} --quick rewrote BENCHMARKS.md"
    figures = json.loads(out.read_text())
    for key in keys:
        assert key in figures
    assert "|" in r.stdout  # printed a table
    if script.endswith("roi_pool.py"):
        assert all(v["speedup"] > 0 for k, v in figures.items() if k not in ("backend", "device"))
    if script.endswith("roi_align.py"):  # its script checks the outputs equal torchvision's first
        assert set(figures["speedup"]) == {"box", "fpn", "mask"}
        assert all(v > 0 for case in figures["speedup"].values() for v in case.values())
    if script.endswith("architectures.py"):  # every row measured, trained and exported
        assert all(r["train_img_s"] > 0 and 0 <= r["shapes_top1"] <= 1 and r["onnx"] == "yes"
                   for r in figures["rows"])
    if script.endswith("step_time.py"):
        steps = figures["seconds_per_step"]
        assert len(steps) == 3 and all(v > 0 for v in steps.values())  # --quick: three variants
    if script.endswith("lineage.py"):
        assert set(figures["speedup"]) == {"spp_vs_rcnn", "fast_rcnn_vs_rcnn", "conv_vs_naive_sliding"}
        assert figures["naive_max_abs_diff"] <= 1e-4
        assert figures["speedup"]["spp_vs_rcnn"] > 1
    if script.endswith("paste_masks.py"):
        assert figures["mismatches"] == 0 and figures["speedup"]["paste_vs_torchvision"] > 0
    if script.endswith("vs_torchvision.py"):
        assert figures["agreement"]["detseg exact"]["box_max_abs_diff"] <= 1e-4
    if script.endswith("finetune.py"):
        assert 0 <= figures["finetune_frozen"]["box_ap"] <= 1 and 0 <= figures["scratch"]["box_ap"] <= 1
        assert figures["speedup"]["iterations_frozen"] >= 0
    if script.endswith("detection_shapes.py"):
        assert 0 <= figures["sppnet"]["AP50"] <= 1
    if script.endswith("host_overhead.py"):
        assert len(figures["ratio"]) == 6 and all(v > 0 for v in figures["ratio"].values())
    if script.endswith("imbalance.py"):  # the baseline and copy-paste, each trained and evaluated
        results = figures["tasks"]["faster_rcnn"]["results"]
        assert set(results) == {"baseline", "copy_paste", "smote_refit"}
        assert all(0 <= run["AP"] <= 1 for runs in results.values() for run in runs.values())
    if script.endswith("from_classifier.py"):  # the classifier trained, each head started from it
        assert 0 <= figures["sliding_window"]["AP"] <= 1 and 0 <= figures["fcn"]["mIoU"] <= 1
        assert all(r["classifier_top1"] >= 0 for r in figures["fcn"]["seeds"].values())
    if script.endswith("trimmed_conv.py"):  # ResNet-18 at 32 px: its layer3 / layer4 convolutions
        assert all(figures[isa]["resnet18"]["trimmed_convs"] == 8 and figures[isa]["resnet18"]["trimmed"] > 0
                   for isa in ("native", "avx2"))
    if script.endswith("vs_torchvision_training.py"):
        assert {(r["impl"], r["iterations"]) for r in figures["runs"]} == {("detseg", 4), ("torchvision", 4)}
        assert all(0 <= figures[impl]["box_ap"] <= 1 for impl in ("detseg", "torchvision"))
        assert figures["speedup"]["train_step"] > 0


def test_torchvision_training_peer_follows_the_recipe(tmp_path):
    """The peer of benchmarks/vs_torchvision_training.py is torchvision's MaskRCNN with the Mask
    R-CNN recipe's settings; it trains on detseg batches and predicts in the files' pixels."""
    import torch

    from benchmarks.vs_torchvision_training import torchvision_detector
    from detseg.config import load_config
    from detseg.data import shapes
    from detseg.data.coco import CocoDataset
    from detseg.data.transforms import collate, eval_transform

    cfg = load_config(str(Path(ROOT) / "configs/mask_rcnn_resnet18_fpn_shapes.yaml"))
    head = cfg.model.heads["det"]
    torch.manual_seed(0)
    peer = torchvision_detector(cfg, 4)
    net = peer.net
    assert net.rpn._pre_nms_top_n == dict(zip(("training", "testing"), head.proposals.pre_nms_top_n))
    assert net.rpn._post_nms_top_n == dict(zip(("training", "testing"), head.proposals.post_nms_top_n))
    assert net.rpn.anchor_generator.sizes == tuple(tuple(s) for s in head.proposals.anchor_sizes)
    assert net.roi_heads.box_roi_pool.featmap_names == ["p3"]
    assert net.roi_heads.fg_bg_sampler.batch_size_per_image == head.batch_size_per_image
    assert net.roi_heads.box_predictor.cls_score.out_features == 5
    assert len([m for m in net.roi_heads.mask_head.modules() if isinstance(m, torch.nn.Conv2d)]) == \
        len(head.mask.conv_dims)
    features = net.backbone(torch.zeros(1, 3, 64, 64))
    assert list(features) == ["p3", "p4", "p5"]  # no extra pooled level: the RPN reads p3-p5
    assert all(f.shape[1] == cfg.model.backbone.fpn_channels for f in features.values())

    split = shapes.generate(str(tmp_path / "ds"), seed=5, num_train=2, num_val=0)["train"]
    ds = CocoDataset(split["ann_file"], split["image_dir"], with_masks=True,
                     transform=eval_transform(96, 288))
    batch = collate([ds[0], ds[1]])
    losses = peer.train()(batch)
    assert torch.isfinite(losses["loss"]) and "loss_mask" in losses
    with torch.no_grad():
        out = peer.eval()(batch)["det"]
    for inst, file_size in zip(out, batch.orig_sizes):
        assert inst.image_size == tuple(file_size) != tuple(batch.image_sizes[0])
        assert inst.masks.dtype == torch.bool and tuple(inst.masks.shape[1:]) == tuple(file_size)
        assert len(inst) == 0 or (inst.boxes[:, 2] <= file_size[1] + 1e-3).all()


def test_finetune_speedups_first_reaching_and_staying():
    """A fine-tuning curve that passes scratch's final figure, falls back, then passes it for good:
    "first reaches" takes the first pass, "stays" the last crossing."""
    from benchmarks.finetune import reaching, summary
    runs = {"scratch": {"curve": [(80, 0.1), (160, 0.3), (240, 0.5)]},
            "finetune": {"curve": [(80, 0.55), (160, 0.45), (240, 0.6)]},
            "finetune_frozen": {"curve": [(80, 0.2), (160, 0.4), (240, 0.45)]}}
    assert reaching(runs, "finetune") == (80, 3.0)
    assert reaching(runs, "finetune", stay=True) == (240, 1.0)
    assert reaching(runs, "finetune_frozen") == (None, None)
    s = summary({"metric": "AP", "seeds": {"0": runs}})
    assert s["finetune"]["speedup_min"] == 3.0 and s["finetune"]["speedup_stay_min"] == 1.0
    assert s["finetune_frozen"]["speedup_min"] == 0.0 and abs(s["finetune"]["gain"] - 0.1) < 1e-9


def test_torchvision_training_report_groups_stored_runs_by_variant(tmp_path, capsys):
    """--report renders stored runs without training: a row per recipe, implementation and
    overrides (given per file with =OVERRIDES where the runs did not record theirs); only the
    recipes' own runs feed the issue's keys, the variants go under ``variants``."""
    from benchmarks.vs_torchvision_training import main

    def run(impl, seed, ap, mask_ap, **extra):
        return {"model": "mask", "impl": impl, "seed": seed, "iterations": 780, "box_ap": ap,
                "box_ap50": ap, "mask_ap": mask_ap, "mask_ap50": mask_ap,
                "s_per_iter": 2.0 if impl == "detseg" else 3.0, "val_images": 200, "threads": 2,
                "device": "cpu", **extra}
    base, capped = tmp_path / "base.json", tmp_path / "capped.json"
    base.write_text(json.dumps({"runs": [run("detseg", 1, 0.4, 0.5), run("detseg", 0, 0.5, 0.6),
                                         run("torchvision", 0, 0.3, 0.4, jobs=2)]}))
    capped.write_text(json.dumps({"runs": [run("detseg", 0, 0.45, 0.55, overrides=["a.b=8"])]}))
    out = tmp_path / "figures.json"
    assert main(["--report", str(base), f"{capped}=x.y=1 z=2", "--no-write", "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    assert abs(figures["detseg"]["mask_ap"] - 0.55) < 1e-9 and figures["torchvision"]["mask_ap"] == 0.4
    assert abs(figures["ap_gain"]["mask_mask"] - 0.15) < 1e-9
    assert figures["variants"] == {"mask detseg x.y=1 z=2":
                                   {"box_ap": 0.45, "mask_ap": 0.55, "s_per_iter": 2.0}}
    table = capsys.readouterr().out
    assert "| mask | detseg | `x.y=1 z=2` | 0 | 780 |" in table
    # seeds in order whatever order the runs were stored in (they finish in any order)
    assert "| mask | detseg | - | 0 / 1 | 780 | 0.500 / 0.400 (mean 0.450) |" in table
    assert "shared the machine (2 at a time)" in table  # a stored run remembers its --jobs
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(SystemExit, match="bad.json: not a JSON file of this benchmark's runs"):
        main(["--report", str(tmp_path / "bad.json"), "--no-write"])


def test_detection_shapes_rows_keep_other_seeds_of_the_same_recipe():
    """`detection_shapes.py --seeds 1` adds to the stored seed-0 run of the same config and length
    (an entry from before seeds were recorded counts as seed 0), and starts afresh when either, or
    the val split, changed."""
    from benchmarks.detection_shapes import per_seed, previous_runs, summarise

    legacy = {"AP": 0.5, "AP50": 0.7, "iterations": 1500, "wall_s": 600.0, "config": "c.yaml",
              "command": "python x", "date": "2026-11-26 10:00"}
    runs = previous_runs(legacy, "c.yaml", 1500, val=60)  # the legacy entry was evaluated on 60
    assert list(runs) == ["0"] and runs["0"]["AP"] == 0.5
    assert previous_runs(legacy, "c.yaml", 1200, val=60) == {}
    assert previous_runs(legacy, "d.yaml", 1500, val=60) == {}
    assert previous_runs(legacy, "c.yaml", 1500, val=200) == {}  # another val split: afresh
    runs["1"] = {"AP": 0.6, "AP50": 0.8, "wall_s": 700.0, "command": "python y", "date": "2026-11-26 11:00"}
    row = summarise("c.yaml", 1500, runs, val=200)
    assert row["AP"] == pytest.approx(0.55) and row["wall_s"] == pytest.approx(650.0)
    assert row["command"] == "python y" and list(row["seeds"]) == ["0", "1"] and row["val_images"] == 200
    assert per_seed(row, "AP") == "0.500 / 0.600 (0.550)"
    assert list(previous_runs(row, "c.yaml", 1500, val=200)) == ["0", "1"]
    assert previous_runs(row, "c.yaml", 1500, val=60) == {}
    runs = {s: {**r, "segm_AP": 0.4 + 0.1 * int(s)} for s, r in runs.items()}  # mask_shapes' keys
    row = summarise("m.yaml", 1800, runs, val=200, keys=("segm_AP", "AP"))
    assert row["segm_AP"] == pytest.approx(0.45) and "AP50" not in row
    assert per_seed(row, "segm_AP") == "0.400 / 0.500 (0.450)"
    assert per_seed(summarise("c.yaml", 1500, {"0": runs["0"]}), "AP50") == "0.700"


def test_stored_runs_of_an_edited_recipe_are_not_joined(tmp_path):
    """A run records its resolved config's digest; once the file's content changes, a new run of it
    starts afresh instead of being averaged with the old runs."""
    from benchmarks.detection_shapes import previous_runs, recipe_digest, summarise
    cfg = tmp_path / "r.yaml"
    cfg.write_text("solver: {lr: 0.002}\n")
    old = recipe_digest(str(cfg))
    run = {"AP": 0.5, "AP50": 0.7, "wall_s": 1.0, "command": "x", "date": "2026-11-27 08:00", "recipe": old}
    row = summarise(str(cfg), 100, {"0": run, "1": {**run, "AP": 0.6}}, val=200)
    assert list(previous_runs(row, str(cfg), 100, val=200)) == ["0", "1"]
    cfg.write_text("solver: {lr: 0.001}\n")
    assert recipe_digest(str(cfg)) != old
    assert previous_runs(row, str(cfg), 100, val=200) == {}


def test_a_time_budgeted_recipe_is_stored_by_its_ceiling_and_shows_each_seeds_length(tmp_path):
    """A recipe with solver.max_minutes stops where its minutes end: its seeds join on the ceiling
    asked for, and the row shows the iterations each seed reached."""
    from benchmarks.detection_shapes import budgeted, iterations_cell, previous_runs, seeds_row, summarise
    cfg = tmp_path / "b.yaml"
    cfg.write_text("solver: {max_minutes: 13.5, max_iter: 3000}\n")
    assert budgeted(str(cfg)) and not budgeted("configs/faster_rcnn_resnet18_shapes.yaml")
    run = {"PQ": 0.7, "wall_s": 800.0, "command": "x", "date": "2026-12-07 08:00", "iterations": 1024}
    row = summarise(str(cfg), 3000, {"0": run, "1": {**run, "iterations": 1001}}, val=200, keys=("PQ",))
    assert list(previous_runs(row, str(cfg), 3000, val=200)) == ["0", "1"]
    assert iterations_cell(row) == "1024 / 1001 of at most 3000"
    assert seeds_row(row, ("PQ",))[1] == iterations_cell(row)
    fixed = summarise(str(cfg), 1500, {"0": {**run, "iterations": 1500}}, val=200, keys=("PQ",))
    assert iterations_cell(fixed) == "1500"


def test_keep_run_retrains_its_own_runs_and_leaves_a_folder_of_the_users_to_train_py(tmp_path, monkeypatch):
    """--keep-run pointed at an earlier run of the benchmark trains it again (--overwrite); pointed
    at a folder of the user's files, train.py is asked without --overwrite (and refuses it)."""
    from benchmarks import _report
    from detseg.outputs import MANIFEST
    calls = []
    monkeypatch.setattr(_report, "run_tool", lambda tool, args, what: calls.append(args) or 1.0)
    monkeypatch.setattr(_report, "open", lambda *a, **k: io.StringIO(""), raising=False)
    users = tmp_path / "mine"
    users.mkdir()
    (users / "notes.txt").write_text("mine")
    run = tmp_path / "run"
    run.mkdir()
    (run / MANIFEST).write_text(json.dumps({"tool": "train", "files": {}}))
    other = tmp_path / "infer"
    other.mkdir()
    (other / MANIFEST).write_text(json.dumps({"tool": "infer", "files": {}}))
    for folder in (users, run, other, tmp_path / "new"):
        _report.run_train("configs/quickstart.yaml", [], str(folder))
    assert ["--overwrite" in args for args in calls] == [False, True, False, False]
    assert (users / "notes.txt").read_text() == "mine"


def test_a_failed_training_run_is_one_line_and_keeps_the_other_recipes(tmp_path, monkeypatch, capsys):
    """A recipe (or one seed of it) whose train.py run fails is named on stderr, the other recipes
    and seeds still run and are reported, and the exit status is 1 (no traceback, no exit 0)."""
    from benchmarks import detection_shapes, mask_shapes

    def fake_run_train(config, overrides, out):
        if "sppnet" in config or "runtime.seed=1" in overrides:
            raise RuntimeError(f"{config} failed:\nValueError: something broke")
        return [{"iter": 4, "AP": 0.5, "AP50": 0.75}], 1.0

    monkeypatch.setattr(detection_shapes, "run_train", fake_run_train)
    out = tmp_path / "figures.json"
    rc = detection_shapes.main(["--only", "sppnet", "fast_rcnn", "--seeds", "0", "1", "--no-write",
                                "--json", str(out)])
    err = capsys.readouterr().err
    assert rc == 1
    assert "detection_shapes: sppnet seed 0: " in err and "something broke" in err
    assert "detection_shapes: fast_rcnn seed 1: " in err and "2 of 2 recipes had failed runs" in err
    assert "Traceback" not in err
    figures = json.loads(out.read_text())
    assert "sppnet" not in figures or figures["sppnet"]["seeds"].get("0", {}).get("AP") != 0.5
    assert figures["fast_rcnn"]["seeds"]["0"]["AP"] == 0.5  # the seed that ran is reported

    monkeypatch.setattr(detection_shapes, "run_train",
                        lambda *a: (_ for _ in ()).throw(RuntimeError("mask recipe failed: OOM")))
    assert mask_shapes.main(["--quick", "--json", str(tmp_path / "m.json")]) == 1
    assert "mask_shapes: seed 0: mask recipe failed: OOM" in capsys.readouterr().err


def test_imbalance_runs_join_only_runs_of_the_same_classes_and_machine(tmp_path, monkeypatch):
    """Each run trains on the benchmark's classes (all eight by default, most to least frequent);
    a stored task's runs are kept beside new ones only when the classes and the CPU are the same,
    and its table says which classes and machine it measured (a store from before says the four
    classes and the AVX2 machine it was measured on)."""
    from benchmarks import imbalance
    from detseg.data.shapes import VOCABULARY

    calls = []

    def fake_run_train(config, overrides, out):
        calls.append(overrides)
        return [{"iter": 700, "AP": 0.5, "APr": 0.1, "APc": 0.4, "APf": 0.6, "recall_r": 0.2}], 60.0

    store = tmp_path / "imbalance.json"
    monkeypatch.setattr(imbalance, "run_train", fake_run_train)
    monkeypatch.setattr(imbalance, "STORE", str(store))
    monkeypatch.setattr(imbalance, "finish", lambda args, name, title, body, figures: calls.append(body))
    legacy = {"config": imbalance.TASKS["faster_rcnn"].config, "iterations": 700, "imbalance": 100.0,
              "recipe": imbalance.recipe_digest(imbalance.TASKS["faster_rcnn"].config),
              "results": {"seesaw": {"0": {"AP": 0.3, "APr": 0.4, "APc": 0.2, "APf": 0.3, "recall_r": 0.8,
                                           "wall_s": 700.0}}}}
    store.write_text(json.dumps({"tasks": {"faster_rcnn": legacy}}))
    assert "circle, rectangle, triangle, hexagon, most to least" in imbalance.format_task(
        "faster_rcnn", imbalance.TASKS["faster_rcnn"], legacy)
    assert "AVX2 only" in imbalance.format_task("faster_rcnn", imbalance.TASKS["faster_rcnn"], legacy)

    assert imbalance.main(["--methods", "baseline", "--seeds", "0"]) == 0
    assert f"data.shapes.classes=[{','.join(VOCABULARY)}]" in calls[0]
    task = json.loads(store.read_text())["tasks"]["faster_rcnn"]
    assert task["classes"] == list(VOCABULARY) and task["machine"] == imbalance.machine_key()
    assert set(task["results"]) == {"baseline"}  # the four-class runs are not joined
    assert f"on 8 classes ({', '.join(VOCABULARY)}" in calls[-1]

    assert imbalance.main(["--methods", "seesaw", "--seeds", "0"]) == 0  # same classes and CPU: joined
    assert set(json.loads(store.read_text())["tasks"]["faster_rcnn"]["results"]) == {"baseline", "seesaw"}
    monkeypatch.setattr(imbalance, "machine_key", lambda: "x86_64, another CPU (AVX2 only), 2 cores")
    assert imbalance.main(["--methods", "seesaw", "--seeds", "0"]) == 0
    assert set(json.loads(store.read_text())["tasks"]["faster_rcnn"]["results"]) == {"seesaw"}
    with pytest.raises(SystemExit):  # an unknown shape: argparse's one line, before any training
        imbalance.main(["--classes", "circle", "blob"])
    assert len([c for c in calls if isinstance(c, list)]) == 3

    # the balanced ceiling is scored again with the long tail's groups (its own split has no rare class)
    evals = []

    def fake_eval(tool, args, what):
        evals.append(args)
        out = Path(args[args.index("--output") + 1])
        out.mkdir(parents=True)
        (out / "metrics.json").write_text(json.dumps({"AP": 0.5, "APr": 0.25, "APc": 0.4, "APf": 0.6}))
        return 1.0

    monkeypatch.setattr(imbalance, "run_tool", fake_eval)
    assert imbalance.main(["--methods", imbalance.CEILING, "--seeds", "0"]) == 0
    assert "data.shapes.imbalance=100.0" in evals[0] and evals[0][1].endswith("best.pth")
    assert "data.shapes.imbalance=1.0" in calls[-2]  # trained on the balanced split
    ceiling = json.loads(store.read_text())["tasks"]["faster_rcnn"]["results"][imbalance.CEILING]["0"]
    assert ceiling["APr"] == 0.25 and ceiling["wall_s"] == 60.0
    n = len(calls)  # --report: the stored tables again, nothing trained
    assert imbalance.main(["--report"]) == 0 and len(calls) == n + 1 and "0.250" in calls[-1]
    store.unlink()
    assert imbalance.main(["--report"]) == 2
