"""See inside a model on one image: its layers, feature maps, what drove a score, the sliding
window's score maps, proposals, pooling bins and FCN's upsampling stages.

    python tools/explain.py layers     --config configs/faster_rcnn_resnet18_shapes.yaml --image img.jpg
    python tools/explain.py features   --weights runs/fcn/best.pth --image img.jpg --layer backbone.stages.c3
    python tools/explain.py saliency   --weights runs/det/best.pth --image img.jpg --target circle
    python tools/explain.py windows    --weights runs/sw/best.pth --image img.jpg
    python tools/explain.py proposals  --weights runs/det/best.pth --image img.jpg --ann val.json
    python tools/explain.py pooling    --config configs/sppnet_resnet18_shapes.yaml --image img.jpg --box 10 10 90 70
    python tools/explain.py upsampling --weights runs/fcn/best.pth --image img.jpg

With ``--config`` the model has its initial weights (what the network is before training); with
``--weights`` a trained checkpoint. Pictures go to ``--output`` (default ``runs/explain/<n>``);
``layers`` prints its table and also writes ``layers.txt`` / ``layers.json`` there.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

VIEWS = ("layers", "features", "saliency", "windows", "proposals", "pooling", "upsampling")


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("view", choices=VIEWS)
    p.add_argument("--image", required=True, help="the image to look at")
    p.add_argument("--config", help="YAML config: the model with its initial weights")
    p.add_argument("--weights", help="a detseg checkpoint (its own config unless --config)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides of --config")
    p.add_argument("--output", help="folder for the pictures (default: runs/explain/<n>)")
    p.add_argument("--overwrite", action="store_true", help="write into a folder holding other files")
    p.add_argument("--device", default="cpu")
    p.add_argument("--layer", help="features / saliency: the module path (`layers` lists them)")
    p.add_argument("--head", help="saliency / windows / upsampling: which head (default: the first fitting)")
    p.add_argument("--target", help="saliency: a class name, or an index (a class, or a detection "
                                    "of an instance head); default: the top class / detection")
    p.add_argument("--method", choices=("grad-cam", "hires-cam", "input-gradient"),
                   help="saliency: default Grad-CAM for classes and pixel classes, HiResCAM for detections")
    p.add_argument("--score", choices=("logit", "probability"), default="logit",
                   help="saliency of a detection: its class logit (Grad-CAM's y^c, before the softmax; "
                        "default) or its probability")
    p.add_argument("--box", type=float, nargs=4, metavar=("X1", "Y1", "X2", "Y2"),
                   help="pooling: the region in the image's pixels (default: the top detection)")
    p.add_argument("--feature", help="pooling: the backbone map (default: one where the box spans >= 4 cells)")
    p.add_argument("--ann", help="proposals: a COCO annotation file holding this image, for the recall")
    p.add_argument("--mode", default="fast", choices=("fast", "quality"), help="proposals: selective search preset")
    p.add_argument("--max-depth", type=int, help="layers: module nesting shown (0: the model's parts)")
    return p


def ground_truth(ann: str, image: str):
    """``[G, 4]`` xyxy boxes of ``image`` (matched by file name) in COCO file ``ann``."""
    import torch

    from detseg.data.io import DataError
    from detseg.data.validate import read_annotations
    data, problems = read_annotations(ann)
    if data is None:
        raise DataError(f"{ann}: {problems[0].detail}")
    name = os.path.basename(image)
    ids = [im.get("id") for im in data.get("images") or [] if isinstance(im, dict)
           and os.path.basename(str(im.get("file_name", ""))) == name]
    if not ids:
        raise DataError(f"{ann}: no image named {name!r}; the recall needs this image's annotations")
    boxes = []
    for a in data.get("annotations") or []:
        box = a.get("bbox") if isinstance(a, dict) and a.get("image_id") == ids[0] and not a.get("iscrowd") else None
        if isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box):
            boxes.append(box)
    t = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    return torch.cat([t[:, :2], t[:, :2] + t[:, 2:]], dim=1)


def main(argv=None) -> int:
    from detseg.utils import parse_once
    args = parse_once(get_parser(), argv, intermixed=True)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from detseg.config import ConfigError
    from detseg.data.io import DataError
    from detseg.engine.checkpoint import CheckpointError
    from detseg.modeling.backbones import WeightsError
    from detseg.outputs import claim_dir
    from detseg.utils import UsageError, check_device, next_numbered_dir
    if args.overrides and not args.config:
        print("error: overrides need --config (a checkpoint carries its own config)", file=sys.stderr)
        return 2
    if args.max_depth is not None and args.max_depth < 0:
        print("error: --max-depth must be >= 0", file=sys.stderr)
        return 2
    target = args.target
    if target is not None and target.lstrip("-").isdigit():
        target = int(target)
    try:
        from detseg.data.io import read_image
        image = read_image(args.image)
        device = check_device(args.device)
        output = claim_dir(args.output or next_numbered_dir(os.path.join("runs", "explain")), "explain",
                           inputs=[args.image, args.config, args.weights, args.ann], overwrite=args.overwrite)
        from detseg.explain import Explainer
        if args.weights:
            ex = Explainer.from_checkpoint(args.weights, config=args.config, device=device)
        else:
            ex = Explainer.from_config(args.config, args.overrides, device=device)
        options = {
            "layers": {"max_depth": args.max_depth},
            "features": {"layer": args.layer},
            "saliency": {"target": target, "head": args.head, "layer": args.layer, "method": args.method,
                         "score": args.score},
            "windows": {"head": args.head},
            "proposals": {"mode": args.mode, "gt_boxes": ground_truth(args.ann, args.image) if args.ann else None},
            "pooling": {"box": args.box, "feature": args.feature},
            "upsampling": {"head": args.head},
        }[args.view]
        written = ex.write(args.view, image, output.path, **options)
    except (ConfigError, DataError, CheckpointError, UsageError, WeightsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (KeyError, ValueError) as e:  # a layer, head, class or view this model does not have
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {args.view}: {message}", file=sys.stderr)
        return 2
    finally:
        if "output" in locals():
            output.list_files(complete=True)
    if args.view == "layers":
        print(open(written[0], encoding="utf-8").read(), end="")
    print(json.dumps({"output": output.path, "written": [os.path.basename(w) for w in written]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
