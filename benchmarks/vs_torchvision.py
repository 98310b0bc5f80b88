"""Inference per image: detseg vs torchvision, identical Mask R-CNN (or Faster R-CNN)
ResNet-50-FPN weights and inputs, on the CPU or (--device cuda) both on a GPU.

A 640x480 photo (coco_tiny when present, else a synthetic image) resized to 800 inside each model,
score threshold 0 so both return 100 detections (with masks pasted at the photo's size). Weights
are torchvision's architecture with seeded random values (the COCO files cannot be downloaded
here); speed does not depend on the values. detseg runs in its default mode (channels-last
convolutions, frozen BN folded into the convolutions) and in its exact mode (torchvision's
kernels and BN arithmetic); the outputs of both are compared with torchvision's.
"""
from __future__ import annotations

import glob
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._report import (ROOT, add_device_arg, base_parser, device_label, device_time,  # noqa: E402
                                finish, markdown_table)


def main(argv=None) -> int:
    p = base_parser(__doc__)
    p.add_argument("--model", choices=["mask_rcnn", "faster_rcnn"], default="mask_rcnn")
    p.add_argument("--repeats", type=int, default=5)
    add_device_arg(p)
    args = p.parse_args(argv)
    dev = args.device
    if args.quick:
        args.repeats = 1

    import numpy as np
    import torch
    from torchvision.models.detection import fasterrcnn_resnet50_fpn, maskrcnn_resnet50_fpn
    from torchvision.ops import box_iou

    from detseg.api import Predictor
    from detseg.config import from_dict
    from detseg.data.io import read_image
    from detseg.modeling.model import build_model
    from detseg.weights import from_torchvision

    photos = sorted(glob.glob(os.path.join(ROOT, "..", "shared", "data", "coco_tiny", "val2017", "*.jpg")))
    photos = [f for f in photos if read_image(f).shape[:2] == (480, 640)] or photos
    image = read_image(photos[0]) if photos else \
        np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    source = os.path.basename(photos[0]) if photos else "synthetic 640x480"
    # the in-model resize (torchvision's 800 / 1333); --quick: a smaller input and resize keep it short
    min_size, max_size = (320, 533) if args.quick else (800, 1333)
    if args.quick:
        image = image[:240, :320].copy()
    torch.manual_seed(0)
    build = maskrcnn_resnet50_fpn if args.model == "mask_rcnn" else fasterrcnn_resnet50_fpn
    tv = build(weights=None, weights_backbone=None, box_score_thresh=0.0, min_size=min_size,
               max_size=max_size).eval()
    ckpt = from_torchvision(tv.state_dict(), args.model)
    tv = tv.to(dev)
    predictors = {}
    for name, fast in (("detseg", True), ("detseg exact", False)):
        cfg = from_dict(ckpt["config"])
        cfg.model.heads["det"].score_thresh = 0.0
        cfg.data.min_size_test, cfg.data.max_size = min_size, max_size
        model = build_model(cfg, ckpt["num_classes"])
        model.load_state_dict(ckpt["model"])
        predictors[name] = Predictor(model, cfg, ckpt["class_names"], ckpt["label_map"]["cat_ids"],
                                     device=dev, channels_last=fast, fold_bn=fast)
    x = (torch.from_numpy(image).permute(2, 0, 1).float() / 255).to(dev)

    def run_tv():
        with torch.no_grad():
            out = tv([x])[0]
        if "masks" in out:  # the same end point as detseg: a boolean mask per detection
            out["masks"] = out["masks"] >= 0.5
        return out

    times = {"torchvision": device_time(dev, run_tv, args.repeats)}
    outputs = {"torchvision": run_tv()}
    for name, pred in predictors.items():
        times[name] = device_time(dev, lambda: pred(image), args.repeats)
        outputs[name] = pred(image)["instances"]
    ref = {k: v.cpu() for k, v in outputs["torchvision"].items()}
    agreement = {}
    for name in predictors:
        inst = outputs[name].to("cpu")
        iou = box_iou(inst.boxes, ref["boxes"]) if len(inst) and len(ref["boxes"]) else torch.zeros(1, 1)
        same_count = len(inst) == len(ref["boxes"])
        # Share of our detections that torchvision also returns (same label, IoU >= 0.99): robust to
        # near-tie swaps in the ranking, which the per-rank box difference and the minimum are not.
        # (detseg's labels are 0..K-1, torchvision's COCO category ids.)
        cat = torch.as_tensor(ckpt["label_map"]["cat_ids"])[inst.labels.cpu()]
        same_label = cat[:, None] == ref["labels"][None]
        matched = float(((iou >= 0.99) & same_label).any(1).float().mean()) if len(inst) else 0.0
        agreement[name] = {"detections": len(inst),
                           "box_max_abs_diff": float((inst.boxes - ref["boxes"]).abs().max())
                           if same_count else float("nan"),
                           "min_matched_iou": float(iou.max(1).values.min()),
                           "matched_fraction": matched}
    rows = [[name, f"{t:.2f}", f"{times['torchvision'] / t:.2f}x",
             str(agreement.get(name, {}).get("detections", len(ref["boxes"]))),
             f"{agreement[name]['box_max_abs_diff']:.1e}" if name in agreement else "-",
             f"{agreement[name]['min_matched_iou']:.4f}" if name in agreement else "-",
             f"{agreement[name]['matched_fraction']:.2f}" if name in agreement else "-"]
            for name, t in times.items()]
    body = (f"{args.model}, input {source} {image.shape[1]}x{image.shape[0]} resized to {min_size} in "
            f"the model, score threshold 0, median of {args.repeats} runs after a warm-up, torch threads "
            f"{torch.get_num_threads()}.\n\n")
    body += markdown_table(["implementation", "s per image", "speed-up vs torchvision", "detections",
                            "max box diff vs torchvision (px)", "min IoU with torchvision's boxes",
                            "share also found by torchvision (IoU >= 0.99, same label)"], rows)
    body += ("\n\nWith random weights and a score threshold of 0 the 100 kept detections are near-ties, "
             "so the default mode's float-rounding differences (channels-last kernels, folded BN) can "
             "swap a few of them; on the CPU the exact mode reproduces torchvision's boxes. On a GPU "
             "neither mode is bit-exact (cuDNN picks convolution algorithms per layout, and "
             "torchvision's CUDA RoIAlign fuses its arithmetic differently from its CPU one), so "
             "near-ties swap there in both modes.")
    label = device_label(dev)
    finish(args, "vs_torchvision" + ("_cuda" if label else ""),
           f"Mask R-CNN R50-FPN on {label.strip(' ()') or 'CPU'}: detseg vs torchvision", body,
           {"seconds": times, "speedup": {k: times["torchvision"] / v for k, v in times.items()},
            "agreement": agreement, "model": args.model, "device": dev})
    return 0


if __name__ == "__main__":
    sys.exit(main())
