"""kill -9 in the middle of a checkpoint save, then --resume: the run ends with the weights of a run
that was never interrupted, no temp file is left and metrics.jsonl logs each iteration once."""
import glob
import json
import os
import subprocess
import sys

import torch

from tests.conftest import ROOT, script_env

# Runs tools/train.py with torch.save replaced by one that, on the second model_*.pth, writes a
# few bytes and then SIGKILLs its own process: the kill lands inside the save, as a user's would.
DYING = """
import os, signal, sys, torch
real = torch.save
calls = []
def dying_save(obj, f, *args, **kwargs):
    calls.append(1)
    if len(calls) == 2:
        f.write(b"PK\\x03\\x04 half a checkpoint")
        f.flush()
        os.fsync(f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)
    return real(obj, f, *args, **kwargs)
torch.save = dying_save
sys.path.insert(0, os.getcwd())
from tools import train
sys.exit(train.main(sys.argv[1:]))
"""


def test_kill_during_checkpoint_save_then_resume(tmp_path, shapes_data, monkeypatch):
    from tools import train
    monkeypatch.setenv("DETSEG_NO_PROGRESS", "1")
    args = ["data.batch_size=2", "data.num_workers=0", "data.min_size_train=[64]", "data.min_size_test=64",
            "data.max_size=96", "solver.max_iter=6", "solver.checkpoint_period=2", "solver.eval_period=100",
            "solver.log_period=1", "solver.warmup_iters=2", "--deterministic",
            f"data.train.ann_file={shapes_data['train']['ann_file']}",
            f"data.train.image_dir={shapes_data['train']['image_dir']}"]
    killed = tmp_path / "killed"
    r = subprocess.run([sys.executable, "-c", DYING, *args, "--output-dir", str(killed)], cwd=ROOT,
                       env=script_env(DETSEG_NO_PROGRESS="1"), capture_output=True, text=True, timeout=600)
    assert r.returncode == -9, r.stderr[-2000:]
    assert glob.glob(str(killed / ".tmp-*")), "the kill did not land inside a save"
    assert sorted(os.listdir(killed / ".")) and os.path.exists(killed / "model_0000002.pth")
    assert not os.path.exists(killed / "model_0000004.pth")

    assert train.main([*args, "--output-dir", str(killed), "--resume"]) == 0
    assert train.main([*args, "--output-dir", str(tmp_path / "straight")]) == 0
    assert not glob.glob(str(killed / ".tmp-*"))
    a = torch.load(killed / "model_0000006.pth", weights_only=True)["model"]
    b = torch.load(tmp_path / "straight" / "model_0000006.pth", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    iters = [json.loads(line)["iter"] for line in open(killed / "metrics.jsonl")]
    assert iters == [1, 2, 3, 4, 5, 6]
    mode = os.stat(killed / "model_0000006.pth").st_mode & 0o777
    umask = os.umask(0o022)
    os.umask(umask)
    assert mode == 0o666 & ~umask  # as a plain open() would make it, not mkstemp's 0600


def test_full_disk_during_a_save_is_one_line_and_keeps_the_last_checkpoint(
        tmp_path, shapes_data, monkeypatch, capsys):
    import errno

    from detseg.engine import checkpoint
    from detseg.engine.checkpoint import load_checkpoint
    from tools import train
    monkeypatch.setenv("DETSEG_NO_PROGRESS", "1")
    real, calls = checkpoint.save_atomic, []

    def full_disk(obj, path):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(obj, path)

    monkeypatch.setattr(checkpoint, "save_atomic", full_disk)
    out = tmp_path / "run"
    assert train.main(["data.batch_size=2", "data.num_workers=0", "data.min_size_train=[64]",
                       "data.min_size_test=64", "data.max_size=96", "solver.max_iter=4",
                       "solver.checkpoint_period=2", "solver.eval_period=100",
                       f"data.train.ann_file={shapes_data['train']['ann_file']}",
                       f"data.train.image_dir={shapes_data['train']['image_dir']}",
                       "--output-dir", str(out)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "No space left on device" in err and "are intact" in err
    assert load_checkpoint(str(out / "model_0000002.pth"))["iteration"] == 2
