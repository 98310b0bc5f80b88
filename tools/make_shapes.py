"""Write the built-in synthetic shapes dataset (COCO format) to a folder.

    python tools/make_shapes.py --out data/shapes --seed 0 --num-train 300 --num-val 60
    python tools/make_shapes.py --out data/shapes2 --classes star ellipse cross circle triangle
    python tools/make_shapes.py --out data/shapes_pan --panoptic   # + sky / ground / water stuff
    python tools/make_shapes.py --out data/longtail --classes circle rectangle triangle hexagon star \
        ellipse cross pentagon --imbalance 100   # long-tailed train split, balanced val

The output folder is replaced only when it is empty or an earlier shapes dataset holding nothing
else (its manifest lists what the generator wrote; a file added or changed there is refused).
"""
from __future__ import annotations

import argparse
import sys

from detseg.data import shapes


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True,
                   help="output folder (replaced if it is an earlier shapes dataset; any other "
                        "non-empty folder is refused)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-train", type=int, default=300)
    p.add_argument("--num-val", type=int, default=60)
    p.add_argument("--classes", nargs="+", metavar="NAME",
                   help=f"shapes to draw, from {', '.join(shapes.VOCABULARY)} (default: "
                        f"{' '.join(shapes.CLASSES)})")
    p.add_argument("--imbalance", type=float, default=1.0,
                   help="long-tailed train split: the first class this many times as frequent as the "
                        "last, exponential decay between (val stays balanced); default 1, balanced")
    p.add_argument("--panoptic", action="store_true",
                   help="the panoptic variant: sky, ground and water regions (stuff) behind the "
                        "shapes, in the COCO panoptic format (annotations/panoptic_<split>.json and "
                        "its PNG folder) beside the things' instances file")
    return p


def main(argv=None) -> int:
    from detseg.utils import parse_once
    args = parse_once(get_parser(), argv)
    if args.num_train < 0 or args.num_val < 0:
        print("error: --num-train and --num-val must be >= 0", file=sys.stderr)
        return 2
    if not args.imbalance >= 1:
        print(f"error: --imbalance must be >= 1 (got {args.imbalance:g})", file=sys.stderr)
        return 2

    try:
        writer = None
        if args.panoptic:
            from detseg.data.shapes_panoptic import write_panoptic_split as writer
        paths = shapes.generate(args.out, args.seed, args.num_train, args.num_val, args.classes,
                                imbalance=args.imbalance, writer=writer)
    except (ValueError, OSError) as e:  # NotShapesFolder, an unknown shape, an unwritable folder
        print(f"error: {e}", file=sys.stderr)
        return 1
    for split, p in paths.items():
        print(f"{split}: {p['ann_file']}  images in {p['image_dir']}")
        if "panoptic_json" in p:
            print(f"{split}: {p['panoptic_json']}  PNGs in {p['panoptic_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
