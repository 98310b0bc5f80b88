"""FCN-8s accuracy on shapes val after a bounded CPU training run (mIoU, pixel accuracy, time).

Runs tools/train.py exactly as a user would, then reads the run's metrics.jsonl.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._report import ROOT, base_parser, finish, markdown_table  # noqa: E402


def main(argv=None) -> int:
    p = base_parser(__doc__)
    p.add_argument("--config", default="configs/fcn8s_resnet18_shapes.yaml")
    args = p.parse_args(argv)
    overrides = []
    if args.quick:
        overrides = ["solver.max_iter=20", "solver.eval_period=20", "data.batch_size=2",
                     "data.shapes.num_train=16", "data.shapes.num_val=8", "data.num_workers=0"]
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "run")
        cmd = [sys.executable, os.path.join(ROOT, "tools", "train.py"), "--config", args.config,
               "--output-dir", out, *overrides]
        t0 = time.perf_counter()
        r = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "DETSEG_NO_PROGRESS": "1"},
                           capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if r.returncode != 0:
            print(r.stderr[-3000:], file=sys.stderr)
            return 1
        records = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    evals = [x for x in records if "mIoU" in x]
    last = evals[-1]
    best = max(evals, key=lambda x: x["mIoU"])
    rows = [[args.config, last["iter"], f"{wall / 60:.1f}", f"{last['mIoU']:.3f}",
             f"{last['pixel_acc']:.3f}", f"{best['mIoU']:.3f} @ {best['iter']}"]]
    body = markdown_table(["config", "iterations", "wall min (whole train.py run)", "final mIoU",
                           "final pixel acc", "best mIoU @ iter"], rows)
    body += ("\n\nFrom scratch (no pretrained weights: none can be downloaded here), CPU, shapes "
             "val at the network's input resolution (the config's data.min_size_test). mIoU over "
             "background + 4 classes.")
    finish(args, "fcn_shapes", "FCN-8s on shapes (accuracy)", body,
           {"mIoU": last["mIoU"], "pixel_acc": last["pixel_acc"], "wall_s": wall,
            "iterations": last["iter"], "config": args.config})
    return 0


if __name__ == "__main__":
    sys.exit(main())
