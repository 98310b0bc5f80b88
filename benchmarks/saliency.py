"""Does Grad-CAM point at the object? On a trained shapes Faster R-CNN, the share of each val
image's saliency mass that falls inside the explained detection's box, divided by the box's share
of the image (1: no better than spread evenly; the issue's target: at least 3).

Side by side on the same images and detections: Grad-CAM at the body's last stage (the default),
at the stage before it, the plain input gradient (Simonyan et al. 2014), and Grad-CAM on the same
architecture untrained (its own top detection), which says what the ratio is without learning.

    python benchmarks/saliency.py                 # trains the recipe for --iters first (~6 min here)
    python benchmarks/saliency.py --weights runs/faster_rcnn/best.pth
"""
from __future__ import annotations

import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._report import base_parser, finish, markdown_table, run_train  # noqa: E402

CONFIG = "configs/faster_rcnn_resnet18_shapes.yaml"


def ratios(ex, images: list[str], min_score: float, **cam) -> list[float]:
    """Per image: (saliency mass share inside the top detection's box) / (its area share);
    images whose top detection scores below ``min_score`` are left out."""
    from detseg.explain import grad_cam, mass_in_box
    out = []
    for path in images:
        batch = ex.batch(path)
        try:
            s = grad_cam(ex.model, batch, ex.class_names, **cam)
        except ValueError:  # nothing detected
            continue
        if s.target["score"] < min_score:
            continue
        share, area = mass_in_box(s.heat, s.target["box"])
        out.append(share / area if area > 0 else 0.0)
    return out


def summary(values: list[float]) -> dict:
    return {"images": len(values), "median": statistics.median(values) if values else float("nan"),
            "mean": statistics.fmean(values) if values else float("nan"),
            "share_at_least_3": sum(v >= 3 for v in values) / len(values) if values else float("nan")}


def main(argv=None) -> int:
    p = base_parser(__doc__)
    p.add_argument("--weights", help="a trained detector checkpoint (default: train the recipe)")
    p.add_argument("--iters", type=int, default=600, help="training iterations when training")
    p.add_argument("--images", type=int, default=60, help="val images measured")
    p.add_argument("--min-score", type=float, default=0.5, help="explain detections at least this sure")
    p.add_argument("--keep-run", metavar="DIR", help="train into DIR and keep it (default: a temporary folder)")
    args = p.parse_args(argv)
    if args.quick:
        args.iters, args.images, args.min_score = 4, 4, 0.0
    from detseg.explain import Explainer
    from detseg.explain.saliency import default_layer
    with tempfile.TemporaryDirectory(prefix="detseg-saliency-") as tmp:
        weights = args.weights
        if weights is None:
            small = (["data.batch_size=2", "data.shapes.num_train=8", "data.shapes.num_val=4",
                      "data.num_workers=0"] if args.quick else [])
            run = args.keep_run or os.path.join(tmp, "run")
            records, wall = run_train(CONFIG, [f"solver.max_iter={args.iters}", f"solver.eval_period={args.iters}",
                                               f"solver.checkpoint_period={args.iters}", *small], run)
            weights = os.path.join(run, "best.pth")
            ap = [r for r in records if "AP" in r][-1]["AP"]
        else:
            ap, wall = None, None
        ex = Explainer.from_checkpoint(weights)
        images = ex.val_images(args.images)
        last = default_layer(ex.model)
        stages = ex.model.backbone.body.stage_names
        before = last.rsplit(".", 1)[0] + "." + stages[stages.index(last.rsplit(".", 1)[1]) - 1]
        rows = {}
        for method, name in (("grad-cam", "Grad-CAM"), ("hires-cam", "HiResCAM")):
            rows[f"{name} at {last}"] = ratios(ex, images, args.min_score, method=method)
            rows[f"{name} at {before}"] = ratios(ex, images, args.min_score, method=method, layer=before)
        # the same maps of the softmax probability instead of the class logit (Grad-CAM's y^c)
        for method, name in (("grad-cam", "Grad-CAM"), ("hires-cam", "HiResCAM")):
            rows[f"{name} at {last}, of the probability"] = ratios(ex, images, args.min_score, method=method,
                                                                   score="probability")
        rows["input gradient (Simonyan et al.)"] = ratios(ex, images, args.min_score, method="input-gradient")
        untrained = Explainer.from_config(CONFIG, class_names=ex.class_names)
        for method, name in (("grad-cam", "Grad-CAM"), ("hires-cam", "HiResCAM")):
            rows[f"{name} at {last}, same network untrained"] = ratios(untrained, images, 0.0, method=method)
    figures = {"checkpoint_box_AP": ap, "train_wall_s": wall, "iterations": None if args.weights else args.iters,
               "rows": {k: summary(v) for k, v in rows.items()}}
    table = markdown_table(["saliency", "images", "median mass-in-box / area", "mean", "images >= 3x"],
                           [[k, v["images"], f"{v['median']:.2f}", f"{v['mean']:.2f}",
                             f"{v['share_at_least_3']:.0%}"] for k, v in figures["rows"].items()])
    trained = (f"Faster R-CNN (`{CONFIG}`) trained {args.iters} iterations here (box AP {ap:.3f})"
               if ap is not None else f"the checkpoint {args.weights}")
    med = {k: v["median"] for k, v in figures["rows"].items()}
    hires, grad = med[f"HiResCAM at {last}"], med[f"Grad-CAM at {last}"]
    verdict = lambda v: "passes" if v >= 3 else "misses"  # noqa: E731
    body = (table + f"\n\nEach val image's top detection (score >= {args.min_score}) of {trained}, explained; "
            "the figure is the share of the saliency mass inside that detection's box divided by the "
            "box's share of the image (1: spread evenly). What is explained is the detection's class logit "
            "(Grad-CAM's y^c, before the softmax); the rows \"of the probability\" explain its softmax "
            "probability instead. The untrained rows explain that network's own top detection on the same images. "
            "HiResCAM is `tools/explain.py saliency`'s default for a detection (Grad-CAM for a class or a pixel "
            f"class): its median {hires:.2f}x {verdict(hires)} the 3x mark, Grad-CAM's {grad:.2f}x {verdict(grad)} "
            "it (the mean gradient of each channel weighs every place that channel fires, other shapes and "
            "background alike). The untrained HiResCAM row shows how much of the figure is structural: a "
            "region's score reads only the features under its box, so the gradient is zero elsewhere whether "
            "or not anything was learned.")
    finish(args, "saliency", "Grad-CAM on a trained shapes detector: does it point at the object?", body, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
