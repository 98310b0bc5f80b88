"""Panoptic FPN (ResNet-18) on the panoptic shapes: PQ / SQ / RQ, things and stuff, after a
bounded CPU run.

Runs tools/train.py exactly as a user would (the recipe fits its length to ``solver.max_minutes``,
so that a run ends within 15 minutes on the 2-core benchmark machine, whichever its CPU; the table
gives each seed's iterations), then reads the run's metrics.jsonl. ``--seeds`` sets
``runtime.seed`` per run; the runs of one config, length and val split are kept in
benchmarks/results/panoptic_shapes.json, so ``--seeds 1`` adds a seed to the stored seed-0 run.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._report import finish, markdown_table  # noqa: E402
from benchmarks.detection_shapes import run_recipe, seeded_parser, seeds_row  # noqa: E402
from detseg.config import load_config  # noqa: E402

CONFIG = "configs/panoptic_fpn_resnet18_shapes.yaml"
KEYS = ("PQ", "PQ_th", "PQ_st", "SQ", "RQ", "segm_AP", "mIoU")
STORE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "panoptic_shapes.json")


def main(argv=None) -> int:
    recipe = load_config(CONFIG)
    args = seeded_parser(__doc__, recipe.solver.max_iter).parse_args(argv)
    figures, failed = run_recipe(args, CONFIG, args.iterations, STORE, KEYS, "panoptic_shapes: ")
    if figures is None:
        return 1
    body = markdown_table(["config", "iterations", "wall min (whole train.py run, mean)", "seeds", "PQ",
                           "PQ things", "PQ stuff", "SQ", "RQ", "mask AP", "semantic mIoU"],
                          [seeds_row(figures, KEYS)])
    merge = recipe.model.panoptic
    body += (f"\n\nFrom scratch, CPU, on panoptic shapes val ({figures['val_images']} images: 4 thing "
             "classes, sky / ground / water stuff), PQ / SQ / RQ by the COCO panoptic reference's rules "
             "(detseg.evaluation.panoptic_quality), on maps at each file's own size. Merge settings "
             f"(detectron2's): instance score >= {merge.instance_score}, an instance dropped when more than "
             f"{merge.overlap} of it is already taken, stuff regions under {merge.min_area} px dropped. "
             "Semantic mIoU is over the semantic branch's classes (things as one class, and the stuff). "
             "With several seeds each cell gives every seed's figure, then their mean; each run's command "
             "is kept in benchmarks/results/panoptic_shapes.json.")
    finish(args, "panoptic_shapes", "Panoptic FPN on shapes (accuracy)", body, figures)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
