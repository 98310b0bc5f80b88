"""Export a trained detseg model to ONNX or torch.export (.pt2): image in, detections out.

    python tools/export.py --weights runs/x/best.pth --format onnx             # runs/x/best.onnx
    python tools/export.py --weights weights/mask_rcnn_r50_fpn_coco.pth --format pt2 --output m.pt2
    python tools/export.py --weights runs/x/best.pth --static 720 1280          # 720x1280 files only
    python tools/infer.py --weights runs/x/best.onnx --input photo.jpg         # ONNX Runtime

The file takes one RGB uint8 image [3, H, W] of any size (--dynamic, the default; FCN models a
batch [B, 3, H, W] of one size; --static H W: files of that size only) plus its file size, and
proposals for selective-search heads, and returns boxes, scores, labels and 28x28 masks, or label
maps; class names and category ids are in its metadata (see detseg/export.py). After writing, the
file is run on a test image beside the eager model and the largest differences are printed
(--no-check skips).
Exit status: 0 written (and checked), 1 the export or check failed, 2 bad arguments or checkpoint.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True, help="a detseg checkpoint")
    p.add_argument("--format", choices=["onnx", "pt2"], help="default: from --output's extension, else onnx")
    p.add_argument("--output", help="file to write (default: the checkpoint's path, the format's "
                   "extension); an existing file only when it is an earlier export")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output file "
                   "that is not an earlier export (never the checkpoint or config read)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default 18; 16 or later)")
    p.add_argument("--config", help="config replacing the checkpoint's own (architecture must match)")
    p.add_argument("--no-check", action="store_true", help="skip running the file beside the eager model")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--dynamic", action="store_true", default=True,
                      help="any image size, and any batch for FCN models (the default)")
    size.add_argument("--static", nargs=2, type=int, metavar=("H", "W"),
                      help="a graph with fixed shapes for files of H x W pixels only")
    return p


def main(argv=None) -> int:
    from detseg.utils import parse_once
    args = parse_once(get_parser(), argv)
    from detseg.api import load_model
    from detseg.config import ConfigError
    from detseg.engine.checkpoint import CheckpointError
    from detseg.export import check_static_size, export
    from detseg.export.format import DEFAULT_OPSET, written_by_export
    from detseg.export.parity import ParityError, check_parity
    from detseg.outputs import check_output_file
    from detseg.utils import UsageError
    fmt = args.format or (os.path.splitext(args.output)[1].lstrip(".").lower() if args.output else "onnx")
    out = args.output or os.path.splitext(args.weights)[0] + "." + fmt
    try:
        if fmt not in ("onnx", "pt2"):
            raise UsageError(f"{out}: cannot tell the format from the extension; pass --format onnx|pt2")
        if args.opset is not None and fmt != "onnx":
            raise UsageError("--opset applies to ONNX only")
        if args.static:
            check_static_size(args.static)
        check_output_file(out, inputs=[args.weights, args.config], overwrite=args.overwrite,
                          ours=written_by_export, kind="exported model")
        predictor = load_model(args.weights, config=args.config, device="cpu")
        meta = export(predictor, out, fmt=fmt, opset=args.opset or DEFAULT_OPSET,
                      static_size=tuple(args.static) if args.static else None)
    except (CheckpointError, ConfigError, UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ImportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {out}: cannot write the exported model ({e.strerror or e})", file=sys.stderr)
        return 1
    except Exception as e:  # torch.export / the ONNX exporter: their messages run to pages
        print(f"error: exporting {args.weights} failed: {type(e).__name__}: {str(e).strip().splitlines()[0]}",
              file=sys.stderr)
        return 1
    report = {"output": out, "format": fmt, "inputs": meta["inputs"], "outputs": meta["outputs"],
              "batch": meta["batch"], "static_size": meta["static_size"]}
    if not args.no_check:
        try:
            report["check"] = check_parity(predictor, out)
        except ParityError as e:
            print(f"error: {out}: {e}", file=sys.stderr)
            return 1
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
