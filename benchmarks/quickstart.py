"""README's first command as a newcomer meets it: ``tools/train.py --config configs/quickstart.yaml``
on a machine that has never run detseg, timed end to end.

Each seed runs in a fresh process with an empty detseg cache (``DETSEG_CACHE``), so the time
includes what a first run pays: generating the shapes data, building the C++ kernels if the model
uses them, training, the evaluations, and writing the run folder. The table gives the minutes,
the final val mIoU, and the lines of the run's output that read like a warning or an error
(there should be none).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._report import ROOT, base_parser, finish, markdown_table  # noqa: E402

CONFIG = "configs/quickstart.yaml"
# What a user would take for a warning or an error: Python's warnings ("UserWarning: ..."),
# logging's "WARNING" / "ERROR", glog-style "W1206 12:00:00" / "[W1206 ...]" lines from C++
# libraries, and tracebacks.
ALARMING = re.compile(r"warn|error|traceback|^\[?[WE]\d{4} ", re.IGNORECASE)


def alarming_lines(output: str) -> list[str]:
    """The lines of a run's output that read like a warning, an error or a traceback."""
    # tqdm redraws its bar with carriage returns: each redraw is a line of its own
    return [line for line in re.split(r"[\r\n]+", output) if ALARMING.search(line)]


def run_quickstart(seed: int, overrides: list[str], out: str, cache: str) -> dict:
    """One newcomer's run in a fresh process; its minutes, final mIoU and alarming lines."""
    cmd = [sys.executable, os.path.join(ROOT, "tools", "train.py"), "--config", CONFIG,
           "--output-dir", out, f"runtime.seed={seed}", *overrides]
    env = {k: v for k, v in os.environ.items() if k not in ("DETSEG_EXT_CACHE", "DETSEG_NO_PROGRESS")}
    env["DETSEG_CACHE"] = cache  # nothing generated or built before: a first run
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"{CONFIG} failed:\n{r.stderr[-3000:]}")
    with open(os.path.join(out, "metrics.jsonl"), encoding="utf-8") as f:
        evals = [rec for rec in map(json.loads, f) if "mIoU" in rec]
    return {"seed": seed, "minutes": wall / 60, "mIoU": evals[-1]["mIoU"], "iters": evals[-1]["iter"],
            "alarming": alarming_lines(r.stdout + "\n" + r.stderr),
            "files": sorted(os.listdir(out))}


def main(argv=None) -> int:
    p = base_parser(__doc__)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = p.parse_args(argv)
    quick = ["solver.max_iter=4", "solver.eval_period=4", "solver.checkpoint_period=4",
             "solver.warmup_iters=1", "data.shapes.num_train=16", "data.shapes.num_val=4"] if args.quick else []
    seeds = args.seeds[:1] if args.quick else args.seeds
    tmp = tempfile.mkdtemp(prefix="detseg-quickstart-")
    runs = []
    try:
        for seed in seeds:
            run = run_quickstart(seed, quick, os.path.join(tmp, f"run-{seed}"), os.path.join(tmp, f"cache-{seed}"))
            runs.append(run)
            print(run, flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rows = [[r["seed"], f"{r['minutes']:.1f}", r["iters"], f"{r['mIoU']:.3f}", len(r["alarming"]),
             ", ".join(f for f in r["files"] if not f.startswith(("model_", ".")))] for r in runs]
    table = markdown_table(["seed", "minutes, end to end", "iterations", "val mIoU (shapes val, 60 images as shipped)",
                            "warning / error lines", "run folder"], rows)
    body = (f"`python tools/train.py --config {CONFIG}` in a fresh process with an empty detseg cache "
            "(shapes data generated, kernels built if used, trained, evaluated, run folder written), "
            f"mean {statistics.mean(r['minutes'] for r in runs):.1f} minutes, mIoU "
            f"{statistics.mean(r['mIoU'] for r in runs):.3f}. The run's length is fitted to the config's "
            "`solver.max_minutes`, so its iterations (and with them the mIoU) depend on the CPU; the "
            f"settings tried, and what each gave, are in the config's comments.\n\n{table}\n")
    finish(args, "quickstart", "README's first command, end to end", body, {"runs": runs})
    return 0 if all(not r["alarming"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
