"""FCN-8s accuracy on shapes val after a bounded CPU training run (mIoU, pixel accuracy, time).

Runs tools/train.py exactly as a user would, then reads the run's metrics.jsonl. ``--seeds`` sets
``runtime.seed`` per run; the runs of one config, length and val split are kept in
benchmarks/results/fcn_shapes.json, so ``--seeds 1`` adds a seed to a stored seed-0 run.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._report import finish, markdown_table  # noqa: E402
from benchmarks.detection_shapes import run_recipe, seeded_parser, seeds_row  # noqa: E402
from detseg.config import load_config  # noqa: E402

CONFIG = "configs/fcn8s_resnet18_shapes.yaml"
KEYS = ("mIoU", "pixel_acc")
STORE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "fcn_shapes.json")


def main(argv=None) -> int:
    p = seeded_parser(__doc__)
    p.add_argument("--config", default=CONFIG)
    args = p.parse_args(argv)
    cfg = load_config(args.config)
    figures, failed = run_recipe(args, args.config, args.iterations or cfg.solver.max_iter, STORE, KEYS,
                                 "fcn_shapes: ")
    if figures is None:
        return 1
    body = markdown_table(["config", "iterations", "wall min (whole train.py run, mean)", "seeds",
                           "mIoU", "pixel acc"], [seeds_row(figures, KEYS)])
    precision = "bfloat16 autocast (solver.amp)" if cfg.solver.amp else "float32"
    body += ("\n\nFrom scratch (no pretrained weights: none can be downloaded here), CPU, "
             f"{precision}, shapes val ({figures['val_images']} images) at the network's input resolution "
             "(the config's data.min_size_test). mIoU over background + 4 classes. With several seeds each "
             "cell gives every seed's figure, then their mean; each run's command is kept in "
             "benchmarks/results/fcn_shapes.json.")
    finish(args, "fcn_shapes", "FCN-8s on shapes (accuracy)", body, figures)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
