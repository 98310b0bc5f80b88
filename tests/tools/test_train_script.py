"""tools/train.py as a user runs it: a short run, config printing and errors, torchrun on CPU."""
import json
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT, run_script, script_env

TINY = ["data.batch_size=2", "data.num_workers=0", "data.min_size_train=[64]", "data.min_size_test=64",
        "data.max_size=96", "data.shapes.num_train=12", "data.shapes.num_val=4", "solver.warmup_iters=2"]


@pytest.fixture
def cache_env(tmp_path_factory):
    return {"DETSEG_CACHE": str(tmp_path_factory.getbasetemp() / "cache"), "DETSEG_NO_PROGRESS": "1"}


def readme_first_command() -> list[str]:
    """The arguments of tools/train.py in README's first set-up command."""
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    block = re.search(r"```bash\n(.*?)\n```", readme.split("## Set-up", 1)[1], re.S).group(1)
    return shlex.split(block.split("tools/train.py", 1)[1])


def test_readme_first_command_runs_quietly_and_leaves_checkpoint_metrics_and_curves(tmp_path, cache_env):
    """README's first command (its config, on tiny data for a few iterations) as a fresh process:
    a complete run folder, and no output line that reads like a warning or an error."""
    from benchmarks.quickstart import alarming_lines
    out = tmp_path / "run"
    first = readme_first_command()
    assert first[:2] == ["--config", "configs/quickstart.yaml"]
    r = run_script("tools/train.py", *first, *TINY,
                   "solver.max_iter=6", "solver.eval_period=3", "solver.checkpoint_period=3",
                   "--output-dir", str(out), env={**cache_env, "DETSEG_NO_PROGRESS": "0"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "done:" in r.stdout
    assert alarming_lines(r.stdout + "\n" + r.stderr) == []
    expected = {"best.pth", "model_0000006.pth", "metrics.jsonl", "curves.png", "config.yaml"}
    assert expected <= set(os.listdir(out))
    evals = [json.loads(x) for x in open(out / "metrics.jsonl") if "mIoU" in x]
    assert [e["iter"] for e in evals] == [3, 6] and all(0 <= e["mIoU"] <= 1 for e in evals)
    # --eval-only on the best checkpoint reproduces a logged figure.
    r = run_script("tools/train.py", *readme_first_command(), *TINY,
                   "--output-dir", str(out), "--eval-only", env=cache_env)
    assert r.returncode == 0, r.stderr[-2000:]
    metrics = json.loads(r.stdout[r.stdout.index("{"):])
    assert metrics["mIoU"] == pytest.approx(max(e["mIoU"] for e in evals), abs=1e-9)
    # it ran tools/eval.py's code: metrics.json in an eval folder beside the weights
    written = json.load(open(out / "eval" / "metrics.json"))
    assert written["mIoU"] == metrics["mIoU"]


def test_print_config_and_config_errors(cache_env):
    r = run_script("tools/train.py", "--config", "configs/fcn8s_vgg16_shapes.yaml", "solver.max_iter=7",
                   "--print-config", env=cache_env)
    assert r.returncode == 0 and "max_iter: 7" in r.stdout and "name: vgg16" in r.stdout
    r = run_script("tools/train.py", "--config", "configs/fcn8s_vgg16_shapes.yaml", "solver.max_itr=7",
                   env=cache_env)
    assert r.returncode == 2 and "solver.max_itr" in r.stderr and "command line" in r.stderr
    r = run_script("tools/train.py", "--check-data", *TINY, env=cache_env)
    assert r.returncode == 0 and "0 problem(s)" in r.stdout


@pytest.mark.skipif(shutil.which("torchrun") is None and not os.path.exists(
    os.path.join(os.path.dirname(sys.executable), "torchrun")), reason="torchrun not installed")
def test_two_process_gloo_run_keeps_ranks_identical(tmp_path, cache_env):
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    out = tmp_path / "ddp"
    cmd = [torchrun, "--standalone", "--nproc_per_node", "2", "tools/train.py",
           "--config", "configs/fcn8s_resnet18_shapes.yaml", *TINY, "solver.max_iter=4",
           "solver.eval_period=4", "--device", "cpu", "--output-dir", str(out),
           # the backbone joins training at iteration 2: DDP is rebuilt around the new set of
           # trainable parameters, and the ranks must still end identical
           "solver.freeze.parts=[backbone]", "solver.freeze.iters=2"]
    env = script_env(**cache_env, OMP_NUM_THREADS="1")
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "parameters identical on all 2 ranks" in r.stderr
    assert r.stdout.count("done:") == 1  # only rank 0 reports and writes
    assert os.path.exists(out / "model_0000004.pth")


def test_fine_tuning_run_writes_its_init_report_and_resumes_without_reinitialising(
        tmp_path, shapes_data, monkeypatch, capsys, caplog):
    import torch

    from detseg.config import load_config, to_dict
    from detseg.modeling.model import build_model
    from tools import train
    monkeypatch.setenv("DETSEG_NO_PROGRESS", "1")
    old_classes = ["hexagon", "star", "circle"]
    cfg = load_config(None)
    model = build_model(cfg, len(old_classes))
    ckpt = tmp_path / "old.pth"
    torch.save({"model": model.state_dict(), "class_names": old_classes, "config": to_dict(cfg)}, ckpt)
    data = [f"data.train.ann_file={shapes_data['train']['ann_file']}",
            f"data.train.image_dir={shapes_data['train']['image_dir']}"]
    args = [*TINY, *data, "solver.max_iter=2", "solver.checkpoint_period=2", "solver.eval_period=100",
            "--output-dir", str(tmp_path / "ft")]
    assert train.main(["--init-from", str(ckpt), "--resume", *args]) == 2
    assert "give one" in capsys.readouterr().err
    assert train.main(["--init-from", str(tmp_path / "nope.pth"), *args]) == 2
    assert "model.init_from: " in capsys.readouterr().err

    assert train.main(["--init-from", str(ckpt), *args]) == 0
    report = json.load(open(tmp_path / "ft" / "init_report.json"))
    assert report["class_sources"] == {"circle": "circle", "rectangle": None, "triangle": None,
                                       "hexagon": "hexagon"}
    assert set(report["remapped"]) == {"heads.seg.score_top.weight", "heads.seg.score_top.bias",
                                       *(f"heads.seg.score_skips.{i}.{p}" for i in (0, 1)
                                         for p in ("weight", "bias")),
                                       "heads.seg.ups.0.deconv.weight", "heads.seg.ups.1.deconv.weight",
                                       "heads.seg.final_up.deconv.weight"}
    assert not report["reinitialised"] and not report["ignored"]
    # The same command with model.init_from in the config and --resume continues the run's own
    # checkpoint and leaves init_from alone.
    caplog.clear()
    with caplog.at_level("INFO"):
        assert train.main(["--resume", f"model.init_from={ckpt}", *args]) == 0
    assert "model.init_from" in caplog.text and "not applied again" in caplog.text


def test_readme_fine_tuning_commands_on_a_converted_torchvision_detector(tmp_path, shapes_data, monkeypatch):
    """README's "Train on your own data from a COCO-trained detector", with a seeded torchvision
    file for the downloaded one, shapes for "mydata" and small sizes for speed."""
    import torch
    import torchvision

    from tools import convert_weights, train
    monkeypatch.setenv("DETSEG_NO_PROGRESS", "1")
    torch.manual_seed(0)
    tv = torchvision.models.detection.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    torch.save(tv.state_dict(), tmp_path / "fasterrcnn.pth")
    converted = str(tmp_path / "faster_rcnn_r50_fpn_coco.pth")
    assert convert_weights.main(["--model", "faster_rcnn", "--input", str(tmp_path / "fasterrcnn.pth"),
                                 "--output", converted]) == 0
    out = tmp_path / "mine"
    data = [f"data.{s}.{k}={shapes_data[s][k]}" for s in ("train", "val") for k in ("ann_file", "image_dir")]
    assert train.main(["--config", "configs/faster_rcnn_r50_fpn_finetune.yaml", "--output-dir", str(out),
                       *data, f"model.init_from={converted}", "model.init_class_map={circle: sports ball}",
                       "data.min_size_train=[96]", "data.min_size_test=96", "data.max_size=128",
                       "data.num_workers=0", "solver.max_iter=2", "solver.freeze.iters=1",
                       "solver.eval_period=2", "solver.checkpoint_period=2"]) == 0
    report = json.load(open(out / "init_report.json"))
    assert report["class_sources"] == {"circle": "sports ball", "rectangle": None, "triangle": None,
                                       "hexagon": None}
    assert {"heads.det.predictor.cls_score.weight",
            "heads.det.predictor.bbox_pred.bias"} <= set(report["remapped"])
    assert not report["reinitialised"] and not report["ignored"]
    assert os.path.exists(out / "best.pth")
