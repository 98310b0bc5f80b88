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
