"""Every benchmark script runs in its --quick form and writes its figures as JSON."""
import json

import pytest

from tests.conftest import run_script


@pytest.mark.parametrize("script,keys", [
    ("benchmarks/loader.py", ["images_per_s.workers_0", "images_per_s.workers_2"]),
    ("benchmarks/roi_pool.py", ["backend"]),
    ("benchmarks/fcn_shapes.py", ["mIoU", "pixel_acc", "wall_s"]),
])
def test_benchmark_quick_run(tmp_path, tmp_path_factory, script, keys):
    out = tmp_path / "figures.json"
    env = {"DETSEG_CACHE": str(tmp_path_factory.getbasetemp() / "cache")}
    r = run_script(script, "--quick", "--no-write", "--json", str(out), env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    figures = json.loads(out.read_text())
    for key in keys:
        assert key in figures
    assert "|" in r.stdout  # printed a table
    if script.endswith("roi_pool.py"):
        assert all(v["speedup"] > 0 for k, v in figures.items() if k != "backend")
