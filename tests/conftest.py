import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COCO_TINY = os.path.join(ROOT, "..", "shared", "data", "coco_tiny")

# Under pytest-xdist (the README's test command runs two workers) the cores are split between
# the workers, also for the processes tests start: two workers each spinning every core's worth of
# OpenMP threads run several times slower than one worker alone.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    _threads = max(1, _cores // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ.setdefault("OMP_NUM_THREADS", str(_threads))
    import torch
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

# Tests give child processes fresh data caches (DETSEG_CACHE); the C++ kernel is built once in
# the usual cache and shared with them, instead of a 35-second build per child process.
if "DETSEG_EXT_CACHE" not in os.environ:
    from detseg.utils import default_cache_dir
    os.environ["DETSEG_EXT_CACHE"] = os.path.join(default_cache_dir(), "extensions")


def coco_tiny_split(split: str) -> tuple[str, str]:
    """(ann_file, image_dir) of ../shared/data/coco_tiny, skipping the test when it is absent."""
    ann = os.path.join(COCO_TINY, "annotations", f"instances_{split}2017.json")
    if not os.path.isfile(ann):
        pytest.skip("../shared/data/coco_tiny is not present beside this checkout")
    return ann, os.path.join(COCO_TINY, f"{split}2017")


@pytest.fixture(scope="session")
def shapes_data(tmp_path_factory):
    """A small shapes dataset shared by the whole test session."""
    from detseg.data import shapes
    return shapes.generate(str(tmp_path_factory.mktemp("shapes") / "ds"), seed=3, num_train=24, num_val=8)


def script_env(**extra: str) -> dict:
    """The environment of a child Python process: this one's, ``extra`` added, and ``PYTHONPATH``
    holding the checkout first, then what this process' ``PYTHONPATH`` holds (packages installed
    with ``pip --target``, as on a machine without a writable site-packages)."""
    path = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, **extra, "PYTHONPATH": path}


def run_script(script: str, *args: str, timeout: float = 600, env: dict | None = None):
    """Run a tools/ or benchmarks/ script as a user would; returns CompletedProcess."""
    full_env = {**script_env(), **(env or {})}
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *args], capture_output=True,
                          text=True, timeout=timeout, env=full_env, cwd=ROOT)


def call_tool(tool: str, argv: list[str]) -> int:
    """``tools/<tool>.py``'s ``main(argv)`` in this process; its exit status (argparse's usage
    errors, raised as SystemExit, included)."""
    import importlib
    try:
        return importlib.import_module(f"tools.{tool}").main(argv)
    except SystemExit as e:
        return e.code


def overfit(model, batch, steps: int, check) -> bool:
    """Train ``model`` on one batch with AdamW; every 20 steps call ``check(eval outputs)`` and
    return True as soon as it is satisfied (False if it never is)."""
    import torch
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    for it in range(steps):
        model.train()
        losses = model(batch)
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
        if it % 20 == 19:
            model.eval()
            with torch.no_grad():
                if check(model(batch)):
                    return True
    return False
