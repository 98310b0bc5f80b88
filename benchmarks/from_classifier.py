"""The sliding window and FCN started from a trained classifier, at half the from-scratch iterations.

OverFeat slides "a network designed for image classification" over the image and FCN turns that
classifier into a segmenter: both start from the classifier's training. Per seed this trains the
shapes classification recipe (``configs/classify_resnet18_shapes.yaml``), then each head's shapes
recipe with ``model.init_from`` set to that classifier's ``best.pth`` (the backbone's weights load;
ResNet-18's one fully connected layer has no counterpart in these heads, which the init report
in each run folder lists) for half the recipe's iterations, everything else as the recipe has it.
The row beside it is the from-scratch recipe's stored run (benchmarks/detection_shapes.py,
benchmarks/fcn_shapes.py): the target is to reach its final box AP / mIoU in at most half its
iterations.

    python benchmarks/from_classifier.py --seeds 0 1 --keep-run DIR
    python benchmarks/from_classifier.py --heads fcn --seeds 1     # adds to the stored runs

Runs are kept in benchmarks/results/from_classifier.json, joined across calls per head and seed.
"""
from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._report import base_parser, command_line, finish, markdown_table, records_figures, run_train  # noqa: E402
from benchmarks.detection_shapes import (QUICK_VAL_IMAGES, VAL_IMAGES, load_store, per_seed,  # noqa: E402
                                         recipe_digest, save_store)

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
STORE = os.path.join(RESULTS, "from_classifier.json")
CLASSIFIER = "configs/classify_resnet18_shapes.yaml"
# head -> (recipe, its metric, the from-scratch store, that store's key for the recipe or None)
HEADS = {
    "sliding_window": ("configs/sliding_window_resnet18_shapes.yaml", "AP", "detection_shapes.json", "sliding_window"),
    "fcn": ("configs/fcn8s_resnet18_shapes.yaml", "mIoU", "fcn_shapes.json", None),
}
QUICK = ["solver.max_iter=4", "solver.eval_period=4", "solver.checkpoint_period=4", "data.batch_size=2",
         "data.shapes.num_train=8", f"data.shapes.num_val={QUICK_VAL_IMAGES}", "data.num_workers=0"]


def from_scratch(head: str) -> dict | None:
    """The stored from-scratch run of ``head``'s recipe (``iterations``, the metric and ``seeds``)."""
    config, _, store, key = HEADS[head]
    entry = load_store(os.path.join(RESULTS, store))
    entry = entry.get(key) if key else entry
    return entry if entry and entry.get("config") == config else None


def last_record(records: list[dict], metric: str) -> dict:
    return [r for r in records if metric in r][-1]


def train_classifier(seed: int, quick: bool, out: str) -> tuple[str, float, float]:
    """The classification recipe for ``seed`` into ``out``: (its best.pth, top-1, wall s)."""
    records, wall = run_train(CLASSIFIER, [f"runtime.seed={seed}", *(QUICK if quick else [])], out)
    return os.path.join(out, "best.pth"), last_record(records, "top1")["top1"], wall


def train_head(head: str, iterations: int, seed: int, weights: str | None, quick: bool, out: str) -> dict:
    """``head``'s recipe from ``weights`` (None: from scratch) for ``iterations``: its last
    evaluation's metric, wall s."""
    config, metric, _, _ = HEADS[head]
    half = max(1, iterations // 2)
    overrides = QUICK if quick else [f"solver.max_iter={iterations}", f"solver.eval_period={half}",
                                     f"solver.checkpoint_period={half}", f"data.shapes.num_val={VAL_IMAGES}"]
    start = [f"model.init_from={weights}"] if weights else []
    records, wall = run_train(config, [f"runtime.seed={seed}", *start, *overrides], out)
    last = last_record(records, metric)
    return {metric: last[metric], "iter": last["iter"], "wall_s": wall}


def main(argv=None) -> int:
    p = base_parser(__doc__)
    p.add_argument("--heads", nargs="+", choices=list(HEADS), default=list(HEADS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="runtime.seed of each run (classifier and head)")
    p.add_argument("--keep-run", metavar="DIR", help="keep the run folders here (classifier_seedS, HEAD_seedS)")
    p.add_argument("--runs", nargs="+", choices=("classifier", "scratch"), default=["classifier"],
                   help="classifier: the classifier, then each head from it (default); scratch: each head "
                        "from scratch for the same half iterations (the control at equal iterations)")
    args = p.parse_args(argv)
    stored = {} if args.quick else load_store(STORE)
    missing = [HEADS[h][0] for h in args.heads if not args.quick and from_scratch(h) is None]
    if missing:  # at the door, before any training
        print(f"error: no stored from-scratch run of {', '.join(missing)}; run its benchmark first", file=sys.stderr)
        return 2
    iterations = {h: 8 if args.quick else from_scratch(h)["iterations"] // 2 for h in args.heads}
    for head in args.heads:
        entry = stored.setdefault(head, {"config": HEADS[head][0], "seeds": {}})
        digest = recipe_digest(HEADS[head][0])
        if entry.get("iterations") != iterations[head] or entry.get("recipe") != digest:
            entry.update(iterations=iterations[head], recipe=digest, seeds={}, scratch_seeds={})  # start over
    failed = []

    def attempt(what: str, fn):
        """``fn()``, or None with one stderr line when its training run fails (the others still run)."""
        try:
            return fn()
        except RuntimeError as e:
            print(f"from_classifier: {what}: {e}", file=sys.stderr, flush=True)
            failed.append(what)
            return None

    with tempfile.TemporaryDirectory(prefix="detseg-from-classifier-") as tmp:
        root = args.keep_run or tmp
        for seed in args.seeds:
            classifier = None
            if "classifier" in args.runs:
                classifier = attempt(f"classifier seed {seed}", lambda: train_classifier(
                    seed, args.quick, os.path.join(root, f"classifier_seed{seed}")))
            for head in args.heads:
                entry = stored[head]
                stamp = {"command": command_line(), "date": time.strftime("%Y-%m-%d %H:%M")}
                if classifier is not None:
                    weights, top1, cls_wall = classifier
                    run = attempt(f"{head} seed {seed}", lambda: train_head(
                        head, iterations[head], seed, weights, args.quick, os.path.join(root, f"{head}_seed{seed}")))
                    if run is not None:
                        entry["seeds"][str(seed)] = {**run, "classifier_top1": top1, "classifier_wall_s": cls_wall,
                                                     **stamp}
                if "scratch" in args.runs:
                    run = attempt(f"{head} from scratch seed {seed}", lambda: train_head(
                        head, iterations[head], seed, None, args.quick,
                        os.path.join(root, f"{head}_scratch_seed{seed}")))
                    if run is not None:
                        entry.setdefault("scratch_seeds", {})[str(seed)] = {**run, **stamp}
    if records_figures(args):
        save_store(STORE, stored)
    rows, figures = [], {}
    for head in args.heads if args.quick else [h for h in HEADS if h in stored]:
        entry, (config, metric, _, _) = stored[head], HEADS[head]
        scratch = from_scratch(head) or {}
        target = scratch.get(metric)
        cell, mean = {}, {}
        for kind in ("seeds", "scratch_seeds"):
            runs = dict(sorted(entry.get(kind, {}).items(), key=lambda kv: int(kv[0])))
            mean[kind] = statistics.fmean(r[metric] for r in runs.values()) if runs else None
            cell[kind] = per_seed({"seeds": runs, metric: mean[kind]}, metric) if runs else "-"
        runs = entry.get("seeds", {})
        figures[head] = {"iterations": entry["iterations"], metric: mean["seeds"], "seeds": runs,
                         "scratch_same_iterations": {metric: mean["scratch_seeds"], "seeds": entry.get("scratch_seeds", {})},
                         "from_scratch": {"iterations": scratch.get("iterations"), metric: target},
                         "reached": None if target is None or not runs else all(r[metric] >= target for r in runs.values())}
        cls = " / ".join(f"{r['classifier_top1']:.3f}" for r in runs.values()) or "-"
        walls = [r["wall_s"] for r in runs.values()]
        rows.append([config, metric, scratch.get("iterations", "-"),
                     per_seed(scratch, metric) if target is not None else "-", entry["iterations"],
                     cell["scratch_seeds"], cell["seeds"], cls,
                     "-" if figures[head]["reached"] is None else ("yes" if figures[head]["reached"] else "no"),
                     f"{statistics.fmean(walls) / 60:.1f}" if walls else "-"])
    table = markdown_table(["recipe", "metric", "full recipe: iterations", "full recipe from scratch (seeds, mean)",
                            "half: iterations", "half, from scratch", "half, from the classifier",
                            "classifier top-1", "every seed from the classifier reaches the full recipe's mean",
                            "minutes a run from the classifier"], rows)
    body = (table + "\n\nEach seed trains the shapes classifier (`" + CLASSIFIER + "`, that seed) and then the "
            "recipe with `model.init_from` at its best.pth for half the recipe's iterations (its backbone "
            "loads; the heads start fresh), evaluated on the same 200 shapes val images as the "
            "from-scratch runs. \"Half, from scratch\" is the same half-length run without the classifier "
            "(`--runs scratch`), the control at equal iterations. The full-recipe figures are the recipes' stored "
            "runs (BENCHMARKS.md's detection and FCN sections). Each run's command is kept in "
            "benchmarks/results/from_classifier.json; its folder's init_report.json lists what loaded.")
    finish(args, "from_classifier", "Starting from the classifier: sliding window and FCN-8s at half the iterations",
           body, figures)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
