"""Mask R-CNN (ResNet-18 FPN) on shapes: mask AP / AP50 and box AP after a bounded CPU run.

Runs tools/train.py exactly as a user would (iterations chosen so the run fits in 15 minutes on
the 2-core benchmark machine), then reads the run's metrics.jsonl. ``--seeds`` sets
``runtime.seed`` per run; the runs of one config, length and val split are kept in
benchmarks/results/mask_shapes.json, so ``--seeds 1`` adds a seed to the stored seed-0 run.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._report import finish, markdown_table  # noqa: E402
from benchmarks.detection_shapes import run_recipe, seeded_parser, seeds_row  # noqa: E402

CONFIG, ITERATIONS = "configs/mask_rcnn_resnet18_fpn_shapes.yaml", 1800
KEYS = ("segm_AP", "segm_AP50", "AP", "AP50")
STORE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "mask_shapes.json")


def main(argv=None) -> int:
    args = seeded_parser(__doc__, ITERATIONS).parse_args(argv)
    figures, failed = run_recipe(args, CONFIG, args.iterations, STORE, KEYS, "mask_shapes: ")
    if figures is None:
        return 1
    body = markdown_table(["config", "iterations", "wall min (whole train.py run, mean)", "seeds", "mask AP",
                           "mask AP50", "box AP", "box AP50"], [seeds_row(figures, KEYS)])
    body += (f"\n\nFrom scratch, CPU, COCO AP (pycocotools) on shapes val ({figures['val_images']} images); "
             "masks pasted at each file's own resolution and RLE-encoded. With several seeds each cell gives "
             "every seed's figure, then their mean; each run's command is kept in "
             "benchmarks/results/mask_shapes.json.")
    finish(args, "mask_shapes", "Mask R-CNN on shapes (accuracy)", body, figures)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
