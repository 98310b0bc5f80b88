"""FCN-8s accuracy on shapes val after a bounded CPU training run (mIoU, pixel accuracy, time).

Runs tools/train.py exactly as a user would, then reads the run's metrics.jsonl. ``--seeds`` sets
``runtime.seed`` per run; the runs of one config, length and val split are kept in
benchmarks/results/fcn_shapes.json, so ``--seeds 1`` adds a seed to a stored seed-0 run.
"""
from __future__ import annotations

import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._report import base_parser, finish, markdown_table, records_figures  # noqa: E402
from benchmarks.detection_shapes import (QUICK_VAL_IMAGES, VAL_IMAGES, load_store,  # noqa: E402
                                         per_seed, previous_runs, save_store, seed_runs, summarise,
                                         train_seeds)
from detseg.config import load_config  # noqa: E402

CONFIG = "configs/fcn8s_resnet18_shapes.yaml"
KEYS = ("mIoU", "pixel_acc")
STORE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "fcn_shapes.json")


def main(argv=None) -> int:
    p = base_parser(__doc__)
    p.add_argument("--config", default=CONFIG)
    p.add_argument("--iterations", type=int, help="solver.max_iter (default: the config's)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="runtime.seed of each run (default 0)")
    p.add_argument("--keep-run", metavar="DIR", help="keep the run folders (checkpoints, metrics) here, "
                                                     "one per seed")
    args = p.parse_args(argv)
    cfg = load_config(args.config)
    iters = args.iterations or cfg.solver.max_iter
    val = QUICK_VAL_IMAGES if args.quick else VAL_IMAGES
    runs = previous_runs(None if args.quick else load_store(STORE), args.config, iters, val)
    with tempfile.TemporaryDirectory() as tmp:
        # a failed seed is reported on stderr; the seeds that ran are still reported
        last_iter, failed = train_seeds(args.config, iters, args.quick, args.keep_run or tmp, args.seeds,
                                        runs, KEYS, label="fcn_shapes: ")
        if last_iter is None:
            return 1
    figures = summarise(args.config, last_iter, runs, val, KEYS)
    if records_figures(args):
        save_store(STORE, figures)
    rows = [[args.config, figures["iterations"], f"{figures['wall_s'] / 60:.1f}",
             ", ".join(seed_runs(figures)), *(per_seed(figures, k) for k in KEYS)]]
    body = markdown_table(["config", "iterations", "wall min (whole train.py run, mean)", "seeds",
                           "mIoU", "pixel acc"], rows)
    precision = "bfloat16 autocast (solver.amp)" if cfg.solver.amp else "float32"
    body += ("\n\nFrom scratch (no pretrained weights: none can be downloaded here), CPU, "
             f"{precision}, shapes val ({val} images) at the network's input resolution (the config's "
             "data.min_size_test). mIoU over background + 4 classes. With several seeds each cell "
             "gives every seed's figure, then their mean; each run's command is kept in "
             "benchmarks/results/fcn_shapes.json.")
    finish(args, "fcn_shapes", "FCN-8s on shapes (accuracy)", body, figures)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
