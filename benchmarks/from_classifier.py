"""The sliding window and FCN started from a trained classifier, at half the from-scratch iterations.

OverFeat slides "a network designed for image classification" over the image and FCN turns that
classifier into a segmenter: both start from the classifier's training. Per seed this trains a
shapes classifier (``--classifier``: ``pretrain``, ``configs/classify_resnet18_shapes_pretrain.yaml``,
the default, 2700 iterations, or ``recipe``, ``configs/classify_resnet18_shapes.yaml``, 1600;
900 before the trimmed convolutions made its steps cheaper), then each head's shapes recipe with
``model.init_from`` set to that classifier's ``best.pth`` (the backbone's weights load;
ResNet-18's one fully connected layer has no counterpart in these heads, which the init report
in each run folder lists) for half the recipe's iterations, everything else as the recipe has it.
The row beside it is the from-scratch recipe's stored run (benchmarks/detection_shapes.py,
benchmarks/fcn_shapes.py): the target is to reach its final box AP / mIoU in at most half its
iterations.

    python benchmarks/from_classifier.py --seeds 0 1 --keep-run DIR
    python benchmarks/from_classifier.py --heads fcn --seeds 1     # adds to the stored runs
    python benchmarks/from_classifier.py --classifier recipe --seeds 0 1   # from the shorter one

Runs are kept in benchmarks/results/from_classifier.json, joined across calls per head,
classifier and seed; the table has a row per head and classifier.
"""
from __future__ import annotations

import json
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
# name -> the classification config each seed trains first
CLASSIFIERS = {"pretrain": "configs/classify_resnet18_shapes_pretrain.yaml",
               "recipe": "configs/classify_resnet18_shapes.yaml"}
# head -> (recipe, its metric, the from-scratch store, that store's key for the recipe or None)
HEADS = {
    "sliding_window": ("configs/sliding_window_resnet18_shapes.yaml", "AP", "detection_shapes.json", "sliding_window"),
    "fcn": ("configs/fcn8s_resnet18_shapes.yaml", "mIoU", "fcn_shapes.json", None),
    # the FCN paper's network: the top is ResNet's classifier as a convolution (its one linear layer
    # as the score layer, which init_from converts), so no 3x3 conv and no BatchNorm before it
    "fcn_top_classifier": ("configs/fcn8s_resnet18_shapes.yaml", "mIoU", "fcn_shapes.json", None),
}
# a head's settings beside its recipe's (the row says so; its from-scratch figure is the recipe's)
HEAD_OVERRIDES = {"fcn_top_classifier": ["model.heads.seg.top=classifier", "model.heads.seg.head_norm=none"]}
DEFAULT_HEADS = ["sliding_window", "fcn"]
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


def train_classifier(config: str, seed: int, quick: bool, out: str,
                     reuse: bool = False) -> tuple[str, float, float | None, int]:
    """The classification ``config`` for ``seed`` into ``out``: (its best.pth, its best top-1,
    wall s, iterations). ``reuse``: a finished run of ``config`` already in ``out`` (its
    evaluation at max_iter written, best.pth there) is taken as it is (wall None: not timed here)."""
    records, wall = None, None
    if reuse and os.path.isfile(os.path.join(out, "best.pth")):
        from detseg.config import load_config
        with open(os.path.join(out, "metrics.jsonl"), encoding="utf-8") as f:
            done = [json.loads(line) for line in f]
        if any("top1" in r and r["iter"] == load_config(config).solver.max_iter for r in done):
            records = done
            print(f"from_classifier: {out}: the finished classifier run there is used again", flush=True)
    if records is None:
        records, wall = run_train(config, [f"runtime.seed={seed}", *(QUICK if quick else [])], out)
    best = max((r for r in records if "top1" in r), key=lambda r: r["top1"])  # what best.pth holds
    return os.path.join(out, "best.pth"), best["top1"], wall, last_record(records, "top1")["iter"]


def recorded_classifier_wall(stored: dict, name: str, seed: int) -> float | None:
    """The wall s that a stored run of classifier ``name`` for ``seed`` (any head's) recorded."""
    for entry in stored.values():
        run = entry.get("classifiers", {}).get(name, {}).get("seeds", {}).get(str(seed))
        if run is not None:
            return run.get("classifier_wall_s")
    return None


def train_head(head: str, iterations: int, seed: int, weights: str | None, quick: bool, out: str) -> dict:
    """``head``'s recipe from ``weights`` (None: from scratch) for ``iterations``: its last
    evaluation's metric, wall s."""
    config, metric, _, _ = HEADS[head]
    half = max(1, iterations // 2)
    overrides = QUICK if quick else [f"solver.max_iter={iterations}", f"solver.eval_period={half}",
                                     f"solver.checkpoint_period={half}", f"data.shapes.num_val={VAL_IMAGES}"]
    start = [f"model.init_from={weights}"] if weights else []
    records, wall = run_train(config, [f"runtime.seed={seed}", *HEAD_OVERRIDES.get(head, []), *start, *overrides],
                              out)
    last = last_record(records, metric)
    return {metric: last[metric], "iter": last["iter"], "wall_s": wall}



def main(argv=None) -> int:
    p = base_parser(__doc__)
    p.add_argument("--heads", nargs="+", choices=list(HEADS), default=DEFAULT_HEADS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="runtime.seed of each run (classifier and head)")
    p.add_argument("--classifier", choices=list(CLASSIFIERS), default="pretrain",
                   help="the classifier each seed trains first: " +
                        ", ".join(f"{k} ({v})" for k, v in CLASSIFIERS.items()))
    p.add_argument("--keep-run", metavar="DIR", help="keep the run folders here (CLASSIFIER_seedS, "
                                                     "HEAD_CLASSIFIER_seedS, HEAD_scratch_seedS)")
    p.add_argument("--reuse-classifier", action="store_true",
                   help="with --keep-run: a finished classifier run already there is used, not trained again")
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
    cls_config = CLASSIFIERS[args.classifier]
    cls_digest = recipe_digest(cls_config)
    for head in args.heads:
        entry = stored.setdefault(head, {"config": HEADS[head][0]})
        digest = recipe_digest(HEADS[head][0])
        if entry.get("iterations") != iterations[head] or entry.get("recipe") != digest:
            entry.update(iterations=iterations[head], recipe=digest, classifiers={}, scratch_seeds={})  # start over
        by_cls = entry.setdefault("classifiers", {}).setdefault(args.classifier, {"config": cls_config, "seeds": {}})
        if by_cls.get("recipe") != cls_digest:  # the classifier's recipe changed: its runs too
            by_cls.update(config=cls_config, recipe=cls_digest, seeds={})
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
                classifier = attempt(f"classifier {args.classifier} seed {seed}", lambda: train_classifier(
                    cls_config, seed, args.quick, os.path.join(root, f"{args.classifier}_seed{seed}"),
                    args.reuse_classifier and bool(args.keep_run)))
                if classifier is not None and classifier[2] is None:  # reused: the time its own run recorded
                    classifier = (*classifier[:2], recorded_classifier_wall(stored, args.classifier, seed),
                                  classifier[3])
            for head in args.heads:
                entry = stored[head]
                stamp = {"command": command_line(), "date": time.strftime("%Y-%m-%d %H:%M")}
                if classifier is not None:
                    weights, top1, cls_wall, cls_iter = classifier
                    run = attempt(f"{head} seed {seed}", lambda: train_head(
                        head, iterations[head], seed, weights, args.quick,
                        os.path.join(root, f"{head}_{args.classifier}_seed{seed}")))
                    if run is not None:
                        entry["classifiers"][args.classifier]["seeds"][str(seed)] = {
                            **run, "classifier_top1": top1, "classifier_wall_s": cls_wall,
                            "classifier_iter": cls_iter, **stamp}
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

        def summary(runs: dict) -> tuple[dict, float | None, str]:
            """(the runs by seed in order, their mean, the table cell)."""
            runs = dict(sorted(runs.items(), key=lambda kv: int(kv[0])))
            mean = statistics.fmean(r[metric] for r in runs.values()) if runs else None
            return runs, mean, per_seed({"seeds": runs, metric: mean}, metric) if runs else "-"

        ctrl_runs, ctrl_mean, ctrl_cell = summary(entry.get("scratch_seeds", {}))
        figures[head] = {"iterations": entry["iterations"], "classifiers": {},
                         "scratch_same_iterations": {metric: ctrl_mean, "seeds": ctrl_runs},
                         "from_scratch": {"iterations": scratch.get("iterations"), metric: target}}
        for name in [n for n in CLASSIFIERS if n in entry.get("classifiers", {})]:
            runs, mean, cell = summary(entry["classifiers"][name]["seeds"])
            reached = None if target is None or not runs else all(r[metric] >= target for r in runs.values())
            figures[head]["classifiers"][name] = {"config": CLASSIFIERS[name], metric: mean, "seeds": runs,
                                                  "reached": reached}
            if not runs:
                continue
            cls = " / ".join(f"{r['classifier_top1']:.3f}" for r in runs.values())
            iters = sorted({r.get("classifier_iter") for r in runs.values()} - {None})
            walls = [r["wall_s"] for r in runs.values()]
            cls_walls = [r["classifier_wall_s"] for r in runs.values() if r.get("classifier_wall_s") is not None]
            recipe = config + "".join(f" `{o}`" for o in HEAD_OVERRIDES.get(head, []))
            rows.append([recipe, metric, scratch.get("iterations", "-"),
                         per_seed(scratch, metric) if target is not None else "-", entry["iterations"],
                         ctrl_cell, f"`{CLASSIFIERS[name]}` ({'/'.join(map(str, iters)) or '?'} it.)", cell, cls,
                         "-" if reached is None else ("yes" if reached else "no"),
                         f"{statistics.fmean(walls) / 60:.1f}",
                         f"{statistics.fmean(cls_walls) / 60:.1f}" if cls_walls else "-"])
        # the headline: the default classifier's runs where there are any
        first = next((figures[head]["classifiers"][n] for n in CLASSIFIERS if n in figures[head]["classifiers"]
                      and figures[head]["classifiers"][n]["seeds"]), {metric: None, "seeds": {}, "reached": None})
        figures[head].update({metric: first[metric], "seeds": first["seeds"], "reached": first["reached"]})
    table = markdown_table(["recipe", "metric", "full recipe: iterations", "full recipe from scratch (seeds, mean)",
                            "half: iterations", "half, from scratch", "classifier (its iterations)",
                            "half, from the classifier", "classifier top-1 (best.pth)",
                            "every seed from the classifier reaches the full recipe's mean",
                            "minutes a run from the classifier", "minutes a classifier run"], rows)
    body = (table + "\n\nEach seed trains the shapes classifier named in its row (that seed) and then the "
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
