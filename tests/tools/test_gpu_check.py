"""tools/gpu_check.sh: without a GPU it says so, writes that as its report, and fails."""
import os
import subprocess

import pytest
import torch

from tests.conftest import ROOT


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU this is the full check (run it by hand)")
def test_gpu_check_without_a_gpu_reports_and_fails(tmp_path):
    env = {**os.environ, "PYTHON": os.sys.executable}
    r = subprocess.run(["bash", os.path.join(ROOT, "tools", "gpu_check.sh"), str(tmp_path / "report")],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 1
    assert "no CUDA device" in (tmp_path / "report" / "report.md").read_text()
    # a rerun into its own report folder is allowed; a folder of the user's files is refused
    assert subprocess.run(["bash", os.path.join(ROOT, "tools", "gpu_check.sh"), str(tmp_path / "report")],
                          capture_output=True, text=True, env=env, timeout=120).returncode == 1
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.md").write_text("mine")
    r = subprocess.run(["bash", os.path.join(ROOT, "tools", "gpu_check.sh"), str(tmp_path / "mine")],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and "did not write" in r.stderr
    assert os.listdir(tmp_path / "mine") == ["notes.md"]
    assert (tmp_path / "mine" / "notes.md").read_text() == "mine"
