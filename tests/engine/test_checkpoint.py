import os
import pickle

import pytest
import torch

from detseg.engine import checkpoint as ckpt


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_pickled_code_is_refused(tmp_path):
    path = str(tmp_path / "evil.pth")
    with open(path, "wb") as f:
        pickle.dump({"model": {}, "payload": Evil()}, f)
    with pytest.raises(ckpt.CheckpointError, match="refused.*evil.pth|evil.pth.*refused"):
        ckpt.load_checkpoint(path)


def test_crash_before_rename_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = str(tmp_path / "model_0000010.pth")
    ckpt.save_atomic({"iteration": 10, "w": torch.ones(3)}, path)

    def crash(src, dst):
        raise KeyboardInterrupt("killed between write and rename")

    monkeypatch.setattr(ckpt.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_atomic({"iteration": 20, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    state = ckpt.load_checkpoint(path)
    assert state["iteration"] == 10 and torch.equal(state["w"], torch.ones(3))
    assert os.listdir(tmp_path) == ["model_0000010.pth"]  # no temp file left behind


def test_newest_loadable_skips_a_torn_file(tmp_path):
    ckpt.save_atomic({"iteration": 5}, str(tmp_path / "model_0000005.pth"))
    (tmp_path / "model_0000009.pth").write_bytes(b"torn")
    path, state = ckpt.newest_loadable(str(tmp_path))
    assert path.endswith("model_0000005.pth") and state["iteration"] == 5


def test_rng_state_round_trips_through_a_safe_checkpoint(tmp_path):
    import random

    import numpy as np
    torch.manual_seed(1)
    path = str(tmp_path / "r.pth")
    ckpt.save_atomic({"rng": ckpt.rng_state()}, path)
    a = (torch.rand(3), np.random.rand(2), random.random())
    ckpt.set_rng_state(ckpt.load_checkpoint(path)["rng"])
    b = (torch.rand(3), np.random.rand(2), random.random())
    assert torch.equal(a[0], b[0]) and (a[1] == b[1]).all() and a[2] == b[2]
