"""A tour of the lineage drawn by the code itself: classifier -> sliding window -> R-CNN -> SPPNet ->
Faster R-CNN -> FCN -> Mask R-CNN -> panoptic, each step trained here for a short budget on the
built-in shapes data, then shown on the same val images with the explain views that say what the
step adds, its val metric and its measured time per image. Writes ``docs/tour/README.md`` and its
pictures.

    python tools/tour.py                      # about 15 minutes on a 2-core CPU
    python tools/tour.py --quick --output /tmp/tour   # every step for 2 iterations: a smoke run
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (key, title, config, training iterations, explain views, what the step adds)
STEPS = [
    ("classifier", "1. A classifier", "configs/classify_resnet18_shapes.yaml", 150, ["features", "saliency"],
     "A ResNet-18 learns to name the shape in a crop. Everything after reuses its convolutional "
     "body: the feature maps below are what the later heads read; Grad-CAM shows which pixels drove "
     "the top class."),
    ("sliding_window", "2. The classifier slid over the image", "configs/sliding_window_resnet18_shapes.yaml",
     60, ["windows"],
     "OverFeat's idea: classify every window of several sizes, convolutionally (one pass, the fully "
     "connected layers as convolutions). The maps show each class's best window at each place."),
    ("rcnn", "3. R-CNN: proposals, each warped through the CNN", "configs/rcnn_resnet18_shapes.yaml", 40,
     ["proposals"],
     "Selective search proposes a few hundred regions; each is warped to a fixed size and run "
     "through the whole CNN on its own. Accurate, and slow: one CNN pass per proposal."),
    ("sppnet", "4. SPPNet: one CNN pass, a pyramid of bins per region", "configs/sppnet_resnet18_shapes.yaml",
     80, ["pooling"],
     "The image goes through the CNN once; each proposal's window on the feature map is max-pooled "
     "into a fixed pyramid of bins (below: SPP, Fast R-CNN's single-level RoI pooling, and RoIAlign's "
     "samples, on the same region)."),
    ("faster_rcnn", "5. Fast / Faster R-CNN: proposals from the network", "configs/faster_rcnn_resnet18_shapes.yaml",
     70, ["proposals", "saliency"],
     "A region proposal network on the shared features replaces selective search; RoIAlign pools "
     "each proposal. Below: selective search beside the RPN, and HiResCAM of the top detection."),
    ("fcn", "6. FCN: a class for every pixel", "configs/fcn8s_resnet18_shapes.yaml", 100, ["upsampling"],
     "The classifier's dense layers become convolutions; learned deconvolutions (started as bilinear "
     "upsampling) and skips from finer stages bring the coarse score map back to the pixels."),
    ("mask_rcnn", "7. Mask R-CNN: a mask for every instance", "configs/mask_rcnn_resnet18_fpn_shapes.yaml",
     60, [],
     "Faster R-CNN with a small FCN on each region's RoIAlign features: a mask per detected object."),
    ("panoptic", "8. Panoptic FPN: stuff and things", "configs/panoptic_fpn_resnet18_shapes.yaml", 60, [],
     "A semantic head for the background regions (sky, ground, water) beside the instance head, "
     "merged so that every pixel has a class and every object pixel an instance id."),
]
IMAGES = 3  # val images shown per step
VAL = 20  # val images each step is evaluated on
TRAIN = 150  # training images (half the recipes' 300: R-CNN's selective search runs on each once)
METRIC = {"classifier": "top1", "fcn": "mIoU", "panoptic": "PQ"}  # others: box AP


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default=os.path.join(ROOT, "docs", "tour"), help="the tour's folder")
    p.add_argument("--quick", action="store_true", help="2 iterations a step on a tiny split: a smoke run")
    p.add_argument("--overwrite", action="store_true", help="write into a folder holding other files")
    p.add_argument("--only", nargs="+", choices=[s[0] for s in STEPS], help="these steps only")
    return p


def train(config: str, iterations: int, quick: bool, out: str, cache: str) -> dict:
    """Train ``config`` into ``out`` (in this process); the last evaluation's record."""
    from tools import train as train_tool
    # loading in this process: a loader worker forked from a process that has already trained
    # (and run OpenCV's threads for selective search) hung at its first batch here
    small = ["data.batch_size=2", "data.shapes.num_train=8"] if quick else [f"data.shapes.num_train={TRAIN}"]
    args = ["--config", os.path.join(ROOT, config), "--output-dir", out, f"solver.max_iter={iterations}",
            f"solver.eval_period={iterations}", f"solver.checkpoint_period={iterations}",
            f"solver.warmup_iters={min(20, iterations // 2)}", f"data.shapes.num_val={VAL}",
            f"data.shapes.cache_dir={cache}", "runtime.seed=0", "data.num_workers=0", *small]
    with contextlib.redirect_stdout(io.StringIO()):
        code = train_tool.main(args)
    if code != 0:
        raise RuntimeError(f"training {config} failed (exit {code})")
    with open(os.path.join(out, "metrics.jsonl"), encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    return [r for r in records if any(k in r for k in ("AP", "mIoU", "top1", "PQ"))][-1]


def predictions_picture(ex, paths: list[str]):
    """The step's predictions on each image, side by side (score threshold 0.5)."""
    from detseg.data.io import read_image
    from detseg.explain import panels
    from detseg.visualize import draw_prediction
    tiles = []
    for path in paths:
        image = read_image(path)
        result = ex.predictor(image)
        if "instances" in result:
            inst = result["instances"]
            result = {**result, "instances": inst[inst.scores >= 0.5]}
        tiles.append(panels.enlarge(draw_prediction(image, result, ex.class_names), 200, nearest=False))
    return panels.row(tiles)


def time_per_image(ex, paths: list[str]) -> float:
    """Median seconds of one prediction (the lineage benchmark's timer: warm-up, then medians)."""
    from detseg.data.io import read_image
    from detseg.engine.summary import median_seconds
    images = [read_image(p) for p in paths]
    return median_seconds(lambda: [ex.predictor(im) for im in images], repeats=3) / len(images)


def step_page(step, record: dict, seconds: float, wall: float, iterations: int, pictures: list[str]) -> str:
    key, title, config, _, _, text = step
    metric = METRIC.get(key, "AP")
    value = record.get(metric, float("nan"))
    lines = [f"## {title}", "", text, "",
             f"`{config}`, trained {iterations} iterations here ({wall / 60:.1f} min): val {metric} "
             f"{value:.3f} on {VAL} images; {seconds * 1000:.0f} ms per image at test time.", ""]
    lines += [f"![{key} {os.path.splitext(p)[0].split('_', 1)[-1]}]({p})" for p in pictures]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    from detseg.utils import parse_once
    args = parse_once(get_parser(), argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from detseg.outputs import claim_dir
    from detseg.utils import UsageError
    try:
        output = claim_dir(args.output, "tour", overwrite=args.overwrite)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from detseg.explain import Explainer, panels
    steps = [s for s in STEPS if not args.only or s[0] in args.only]
    pages, start = [], time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="detseg-tour-") as tmp:
        cache = os.path.join(tmp, "data")
        for step in steps:
            key, title, config, iterations, views, _ = step
            iterations = 2 if args.quick else iterations
            t0 = time.perf_counter()
            record = train(config, iterations, args.quick, os.path.join(tmp, key), cache)
            wall = time.perf_counter() - t0
            ex = Explainer.from_checkpoint(os.path.join(tmp, key, "best.pth"))
            paths = ex.val_images(IMAGES)  # the classifier: one crop of each kind
            written = [f"{key}_predictions.png"]
            panels.write_rgb(output.file(written[0]), predictions_picture(ex, paths))
            for view in views:
                try:
                    pictures = ex.pictures(view, paths[0])
                except ValueError as e:  # e.g. nothing detected yet to explain
                    print(f"{key}: no {view} picture ({e})", file=sys.stderr)
                    continue
                for stem, rgb in pictures.items():
                    name = f"{key}_{stem}.png"
                    panels.write_rgb(output.file(name), rgb)
                    written.append(name)
            pages.append(step_page(step, record, time_per_image(ex, paths), wall, iterations, written))
            output.list_files()
            print(f"{key}: {wall:.0f} s", flush=True)
    from detseg.utils import atomic_write
    from benchmarks._report import machine
    total = (time.perf_counter() - start) / 60
    head = ["# A tour of the lineage", "",
            "Written by `python tools/tour.py`" + (" --quick" if args.quick else "") +
            f" in {total:.1f} minutes on {machine()}. Every model below was trained by that command, "
            "for the few iterations it names, on the built-in shapes data: the pictures show what each "
            "step adds, not how well it can do (the recipes in README.md train each to its accuracy target).", ""]
    with atomic_write(output.file("README.md"), "w") as f:
        f.write("\n".join(head) + "\n" + "\n".join(pages))
    output.list_files(complete=True)
    print(json.dumps({"output": output.path, "minutes": round(total, 2), "steps": [s[0] for s in steps]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
