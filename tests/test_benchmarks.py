"""Every benchmark script runs in its --quick form, writes its figures as JSON and leaves the
measured figures in BENCHMARKS.md alone."""
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
    ("benchmarks/paste_masks.py", ["speedup", "mismatches"]),
    ("benchmarks/vs_torchvision.py", ["seconds", "speedup", "agreement"]),
    ("benchmarks/finetune.py", ["finetune", "scratch", "speedup"]),
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
    if script.endswith("step_time.py"):
        steps = figures["seconds_per_step"]
        assert len(steps) == 7 and all(v > 0 for v in steps.values())
    if script.endswith("lineage.py"):
        assert set(figures["speedup"]) == {"spp_vs_rcnn", "fast_rcnn_vs_rcnn", "conv_vs_naive_sliding"}
        assert figures["naive_max_abs_diff"] <= 1e-4
        assert figures["speedup"]["spp_vs_rcnn"] > 1
    if script.endswith("paste_masks.py"):
        assert figures["mismatches"] == 0 and figures["speedup"]["paste_vs_torchvision"] > 0
    if script.endswith("vs_torchvision.py"):
        assert figures["agreement"]["detseg exact"]["box_max_abs_diff"] <= 1e-4
    if script.endswith("finetune.py"):
        assert 0 <= figures["finetune"]["box_ap"] <= 1 and 0 <= figures["scratch"]["box_ap"] <= 1
        assert figures["speedup"]["iterations"] >= 0
    if script.endswith("detection_shapes.py"):
        assert 0 <= figures["sppnet"]["AP50"] <= 1
