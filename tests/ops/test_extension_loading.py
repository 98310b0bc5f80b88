"""A C++ build failure gives one warning and the reference; DETSEG_NO_EXT=1 skips the build."""
import pytest
import torch.utils.cpp_extension

from detseg.ops import _ext


def test_build_failure_warns_once_and_falls_back(monkeypatch):
    def broken(**kwargs):
        raise RuntimeError("Error building extension 'detseg_bin_max_pool'\ng++: not found")

    monkeypatch.delenv("DETSEG_NO_EXT", raising=False)
    monkeypatch.setattr(torch.utils.cpp_extension, "load", broken)
    with pytest.warns(RuntimeWarning, match="could not be built.*g\\+\\+: not found.*reference") as rec:
        assert _ext.load_extension.__wrapped__() is None
    assert len(rec) == 1


def test_no_ext_environment_skips_the_build(monkeypatch):
    calls = []
    monkeypatch.setenv("DETSEG_NO_EXT", "1")
    monkeypatch.setattr(torch.utils.cpp_extension, "load", lambda **kw: calls.append(kw))
    assert _ext.load_extension.__wrapped__() is None and calls == []


def test_loading_the_kernels_prints_no_cuda_home_notice_on_a_cpu_machine():
    """torch logs "No CUDA runtime is found, using CUDA_HOME=..." when cpp_extension is imported
    on a machine with the CUDA toolkit and no GPU; the kernels' build is CPU-only and keeps it
    quiet (a fresh process: the import happens once). The build, if it runs, says one line."""
    import subprocess
    import sys

    import torch

    from tests.conftest import script_env
    if torch.cuda.is_available():
        pytest.skip("the notice is only for machines without a GPU")
    code = ("import logging; logging.basicConfig(level=logging.INFO)\n"
            "from detseg.ops._ext import load_extension; load_extension()\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                       env=script_env(CUDA_HOME=sys.prefix))  # an existing folder: torch then logs
    assert r.returncode == 0, r.stderr[-2000:]
    assert "No CUDA runtime" not in r.stderr and "Warning" not in r.stderr, r.stderr[-2000:]
    assert not [line for line in r.stderr.splitlines() if line[:1] == "W" and line[1:5].isdigit()]
