"""FCN-8s accuracy on shapes val after a bounded CPU training run (mIoU, pixel accuracy, time).

Runs tools/train.py exactly as a user would, then reads the run's metrics.jsonl.
"""
from __future__ import annotations

import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._report import base_parser, finish, markdown_table, run_train  # noqa: E402
from detseg.config import load_config  # noqa: E402


def main(argv=None) -> int:
    p = base_parser(__doc__)
    p.add_argument("--config", default="configs/fcn8s_resnet18_shapes.yaml")
    p.add_argument("--keep-run", metavar="DIR", help="keep the run folder (checkpoints, metrics) here")
    args = p.parse_args(argv)
    overrides = []
    if args.quick:
        overrides = ["solver.max_iter=20", "solver.eval_period=20", "data.batch_size=2",
                     "data.shapes.num_train=16", "data.shapes.num_val=8", "data.num_workers=0"]
    with tempfile.TemporaryDirectory() as tmp:
        try:
            records, wall = run_train(args.config, overrides, args.keep_run or os.path.join(tmp, "run"))
        except RuntimeError as e:
            print(e, file=sys.stderr)
            return 1
    evals = [x for x in records if "mIoU" in x]
    last = evals[-1]
    best = max(evals, key=lambda x: x["mIoU"])
    rows = [[args.config, last["iter"], f"{wall / 60:.1f}", f"{last['mIoU']:.3f}",
             f"{last['pixel_acc']:.3f}", f"{best['mIoU']:.3f} @ {best['iter']}"]]
    body = markdown_table(["config", "iterations", "wall min (whole train.py run)", "final mIoU",
                           "final pixel acc", "best mIoU @ iter"], rows)
    cfg = load_config(args.config, overrides)
    precision = "bfloat16 autocast (solver.amp)" if cfg.solver.amp else "float32"
    body += ("\n\nFrom scratch (no pretrained weights: none can be downloaded here), CPU, "
             f"{precision}, shapes val at the network's input resolution (the config's "
             "data.min_size_test). mIoU over background + 4 classes.")
    finish(args, "fcn_shapes", "FCN-8s on shapes (accuracy)", body,
           {"mIoU": last["mIoU"], "pixel_acc": last["pixel_acc"], "wall_s": wall,
            "iterations": last["iter"], "config": args.config})
    return 0


if __name__ == "__main__":
    sys.exit(main())
