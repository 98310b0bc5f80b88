"""Mask R-CNN (ResNet-18 FPN) on shapes: mask AP / AP50 and box AP after a bounded CPU run.

Runs tools/train.py exactly as a user would (iterations chosen so the run fits in 15 minutes on
the 2-core benchmark machine), then reads the run's metrics.jsonl. ``--seeds`` sets
``runtime.seed`` per run; the runs of one config, length and val split are kept in
benchmarks/results/mask_shapes.json, so ``--seeds 1`` adds a seed to the stored seed-0 run.
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

CONFIG, ITERATIONS = "configs/mask_rcnn_resnet18_fpn_shapes.yaml", 1800
KEYS = ("segm_AP", "segm_AP50", "AP", "AP50")
STORE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "mask_shapes.json")


def main(argv=None) -> int:
    p = base_parser(__doc__)
    p.add_argument("--iterations", type=int, default=ITERATIONS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="runtime.seed of each run (default 0)")
    p.add_argument("--keep-run", metavar="DIR", help="keep the run folders (checkpoints) here, one per seed")
    args = p.parse_args(argv)
    val = QUICK_VAL_IMAGES if args.quick else VAL_IMAGES
    runs = previous_runs(None if args.quick else load_store(STORE), CONFIG, args.iterations, val)
    with tempfile.TemporaryDirectory() as tmp:
        # a failed seed is reported on stderr; the seeds that ran are still reported
        last_iter, failed = train_seeds(CONFIG, args.iterations, args.quick, args.keep_run or tmp,
                                        args.seeds, runs, KEYS, label="mask_shapes: ")
        if last_iter is None:
            return 1
    figures = summarise(CONFIG, last_iter, runs, val, KEYS)
    if records_figures(args):
        save_store(STORE, figures)
    rows = [[CONFIG, figures["iterations"], f"{figures['wall_s'] / 60:.1f}", ", ".join(seed_runs(figures)),
             *(per_seed(figures, k) for k in KEYS)]]
    body = markdown_table(["config", "iterations", "wall min (whole train.py run, mean)", "seeds", "mask AP",
                           "mask AP50", "box AP", "box AP50"], rows)
    body += (f"\n\nFrom scratch, CPU, COCO AP (pycocotools) on shapes val ({val} images); masks pasted at "
             "each file's own resolution and RLE-encoded. With several seeds each cell gives every "
             "seed's figure, then their mean; each run's command is kept in "
             "benchmarks/results/mask_shapes.json.")
    finish(args, "mask_shapes", "Mask R-CNN on shapes (accuracy)", body, figures)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
