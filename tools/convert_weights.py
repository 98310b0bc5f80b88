"""Convert torchvision's COCO Faster / Mask R-CNN (ResNet-50-FPN v1) weights to a detseg checkpoint.

    python tools/convert_weights.py --model mask_rcnn --input weights/maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth
    python tools/convert_weights.py --model faster_rcnn --input COCO_V1     # online: torchvision's enum

The output (default weights/<model>_r50_fpn_coco.pth) holds the config, the COCO class names and
category ids: tools/infer.py and tools/eval.py take it as --weights directly.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, choices=["faster_rcnn", "mask_rcnn"])
    p.add_argument("--input", required=True, help="torchvision .pth file, or a weights enum member (COCO_V1)")
    p.add_argument("--output", help="detseg checkpoint to write (an existing file only when an "
                   "earlier convert_weights.py wrote it)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output file that "
                   "convert_weights.py did not write (never --input)")
    return p


def main(argv=None) -> int:
    from detseg.utils import parse_once
    args = parse_once(get_parser(), argv)
    from detseg.modeling.backbones import WeightsError
    from detseg.outputs import check_output_file
    from detseg.utils import UsageError
    from detseg.weights import ConversionError, convert, written_by_convert
    out = args.output or os.path.join("weights", f"{args.model}_r50_fpn_coco.pth")
    try:
        if not args.output:
            os.makedirs("weights", exist_ok=True)
        check_output_file(out, inputs=[args.input if os.path.exists(args.input) else None],
                          overwrite=args.overwrite, ours=written_by_convert, kind="converted checkpoint")
    except (UsageError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        convert(args.input, args.model, out)
    except (ConversionError, WeightsError) as e:
        print(f"error: {args.input}: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # an unwritable --output (nothing is left half-written: atomic)
        print(f"error: {out}: cannot write the converted checkpoint ({e.strerror or e})", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
