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
