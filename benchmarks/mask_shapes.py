"""Mask R-CNN (ResNet-18 FPN) on shapes: mask AP / AP50 and box AP after a bounded CPU run.

Runs tools/train.py exactly as a user would (iterations chosen so the run fits in 15 minutes on
the 2-core benchmark machine), then reads the run's metrics.jsonl.
"""
from __future__ import annotations

import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._report import base_parser, finish, markdown_table  # noqa: E402
from benchmarks.detection_shapes import QUICK_VAL_IMAGES, VAL_IMAGES, train_one  # noqa: E402

CONFIG, ITERATIONS = "configs/mask_rcnn_resnet18_fpn_shapes.yaml", 1800


def main(argv=None) -> int:
    p = base_parser(__doc__)
    p.add_argument("--iterations", type=int, default=ITERATIONS)
    p.add_argument("--keep-run", metavar="DIR", help="keep the run folder (checkpoints) here")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = args.keep_run or os.path.join(tmp, "run")
        last, wall = train_one(CONFIG, args.iterations, args.quick, run_dir)
    rows = [[CONFIG, last["iter"], f"{wall / 60:.1f}", f"{last['segm_AP']:.3f}", f"{last['segm_AP50']:.3f}",
             f"{last['AP']:.3f}", f"{last['AP50']:.3f}"]]
    body = markdown_table(["config", "iterations", "wall min (whole train.py run)", "mask AP", "mask AP50",
                           "box AP", "box AP50"], rows)
    val = QUICK_VAL_IMAGES if args.quick else VAL_IMAGES
    body += (f"\n\nFrom scratch, CPU, COCO AP (pycocotools) on shapes val ({val} images); masks pasted at "
             "each file's own resolution and RLE-encoded.")
    finish(args, "mask_shapes", "Mask R-CNN on shapes (accuracy)", body,
           {"segm_AP": last["segm_AP"], "segm_AP50": last["segm_AP50"], "AP": last["AP"],
            "AP50": last["AP50"], "iterations": last["iter"], "wall_s": wall, "config": CONFIG,
            "val_images": val})
    return 0


if __name__ == "__main__":
    sys.exit(main())
