"""Rare classes on long-tailed shapes: each imbalanced-data method against the plain recipe.

Faster R-CNN (``configs/faster_rcnn_resnet18_shapes.yaml``) trained on the long-tailed shapes
(``data.shapes.imbalance``, default 100: the first class 100x as frequent as the last, the val
split balanced), once per method and seed, with the same iterations; AP and LVIS's split by
training frequency (APr / APc / APf, ``evaluator.frequency_bins``) and the rare classes' recall
at IoU 0.5 on the val images. The balanced-data run of the same recipe is the ceiling. Each run
is ``tools/train.py`` in a fresh process, as a user would run it.

Runs are kept in benchmarks/results/imbalance.json: a later call with other ``--methods`` or
``--seeds`` adds its runs to the table of the same recipe, length and imbalance.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._report import ROOT, base_parser, command_line, finish, markdown_table, records_figures, run_train  # noqa: E402
from benchmarks.detection_shapes import load_store, recipe_digest, save_store  # noqa: E402

CONFIG = "configs/faster_rcnn_resnet18_shapes.yaml"
KEYS = ("AP", "APr", "APc", "APf", "recall_r")
# method -> overrides of the recipe (the long tail itself is set by --imbalance)
METHODS = {
    "baseline": [],
    "repeat_factor": ["data.sampler=repeat_factor", "data.repeat_threshold=0.3"],
    "class_aware": ["data.sampler=class_aware"],
    "focal": ["model.heads.det.loss.kind=focal"],
    "effective_weights": ["model.heads.det.loss.class_weight=effective"],
    "seesaw": ["model.heads.det.loss.kind=seesaw"],
    "copy_paste": ["data.copy_paste.prob=0.5", "data.copy_paste.rarity=1.0"],
    # the baseline run's checkpoint, its region classifier re-fitted on SMOTE-balanced fc7
    # vectors (tools/rebalance.py): no training run of its own, so it needs the baseline's
    "smote_refit": ["tools/rebalance.py --method smote"],
    "balanced (ceiling)": [],
}
STORE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "imbalance.json")
QUICK = ["solver.max_iter=4", "solver.eval_period=4", "data.batch_size=2", "data.shapes.num_train=16",
         "data.shapes.num_val=8", "data.num_workers=0"]


def run_method(name: str, overrides: list[str], imbalance: float, iterations: int, seed: int,
               quick: bool, out: str) -> dict:
    """One training run of the recipe with ``overrides``; its last evaluation's ``KEYS`` and wall s."""
    # quick: a tail of 4 at most, so that its 16 images hold two or more objects of every class
    # (SMOTE draws between two)
    tail = 1.0 if name.startswith("balanced") else min(imbalance, 4.0) if quick else imbalance
    args = [f"data.shapes.imbalance={tail}", f"runtime.seed={seed}", *overrides]
    args += QUICK if quick else [f"solver.max_iter={iterations}", f"solver.eval_period={iterations}",
                                 f"solver.checkpoint_period={iterations}"]
    records, wall = run_train(CONFIG, args, out)
    last = [r for r in records if "AP" in r][-1]
    return {**{k: last.get(k, float("nan")) for k in KEYS}, "wall_s": wall, "iter": last["iter"]}


def refit_baseline(run: str) -> dict:
    """tools/rebalance.py --method smote --eval on the baseline run folder ``run``'s best.pth;
    the re-fitted model's ``KEYS`` and the re-fit's wall s."""
    import subprocess
    out = os.path.join(run, "smote")
    cmd = [sys.executable, os.path.join(ROOT, "tools", "rebalance.py"), "--weights",
           os.path.join(run, "best.pth"), "--output", out, "--method", "smote", "--eval"]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "DETSEG_NO_PROGRESS": "1"}, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"tools/rebalance.py failed:\n{r.stderr[-3000:]}")
    with open(os.path.join(out, "eval_after", "metrics.json"), encoding="utf-8") as f:
        last = json.load(f)
    return {**{k: last.get(k, float("nan")) for k in KEYS}, "wall_s": wall, "iter": None}


def main(argv=None) -> int:
    p = base_parser(__doc__)
    p.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS),
                   help="which rows to run (default all; smote_refit needs baseline before it)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--iterations", type=int, default=700,
                   help="solver.max_iter of every run (default 700: a run within 15 minutes on a 2-core "
                        "AVX2 CPU)")
    p.add_argument("--imbalance", type=float, default=100.0)
    p.add_argument("--keep-run", metavar="DIR",
                   help="keep the run folders here (<method>_<seed>); smote_refit then also re-fits a "
                        "baseline run kept there by an earlier call")
    args = p.parse_args(argv)
    # quick: the baseline, copy-paste (a data path of its own) and the SMOTE re-fit, 4 iterations
    methods = [m for m in args.methods if m in ("baseline", "copy_paste", "smote_refit")] or args.methods[:1] \
        if args.quick else args.methods
    seeds = args.seeds[:1] if args.quick else args.seeds
    # the stored runs of this recipe, length and tail, which this call's runs join (or replace)
    digest = recipe_digest(CONFIG)
    stored = {} if args.quick else load_store(STORE)
    same = (stored.get("iterations"), stored.get("imbalance"), stored.get("recipe")) == \
        (args.iterations, args.imbalance, digest)
    results: dict = {m: dict(r) for m, r in stored.get("results", {}).items()} if same else {}
    baseline_runs = {}  # seed -> the baseline's run folder (smote_refit re-fits its checkpoint)
    with tempfile.TemporaryDirectory() as tmp:
        if args.keep_run:
            tmp = args.keep_run
            for seed in seeds:
                kept = os.path.join(tmp, f"baseline_{seed}")
                if os.path.isfile(os.path.join(kept, "best.pth")):
                    baseline_runs[seed] = kept
        for name in methods:
            results.setdefault(name, {})
            for seed in seeds:
                folder = os.path.join(tmp, f"{name.split()[0]}_{seed}")
                try:
                    if name == "smote_refit":
                        if seed not in baseline_runs:
                            raise RuntimeError("re-fits the baseline's checkpoint: list baseline before it "
                                               "in --methods")
                        r = refit_baseline(baseline_runs[seed])
                    else:
                        r = run_method(name, METHODS[name], args.imbalance, args.iterations, seed, args.quick,
                                       folder)
                    if name == "baseline":
                        baseline_runs[seed] = folder
                except RuntimeError as e:
                    print(f"imbalance: {name} seed {seed}: {e}", file=sys.stderr, flush=True)
                    continue
                results[name][str(seed)] = {**r, "command": command_line(), "date": time.strftime("%Y-%m-%d %H:%M")}
                print(f"imbalance: {name} seed {seed}: " + ", ".join(f"{k} {r[k]:.3f}" for k in KEYS)
                      + f" in {r['wall_s'] / 60:.1f} min", flush=True)
    figures = {"config": CONFIG, "iterations": args.iterations, "imbalance": args.imbalance,
               "recipe": digest, "results": results}
    if records_figures(args):
        save_store(STORE, figures)
    rows = []
    base = results.get("baseline", {})
    for name, runs in sorted(results.items(), key=lambda kv: list(METHODS).index(kv[0])):
        if not runs:
            continue
        cells = []
        for k in KEYS:
            vals = [r[k] for r in runs.values()]
            cell = " / ".join(f"{v:.3f}" for v in vals)
            cells.append(cell + (f" ({statistics.fmean(vals):.3f})" if len(vals) > 1 else ""))
        lift = ""
        if base and name != "baseline":
            common = [s for s in runs if s in base]
            if common:
                gain = statistics.fmean(runs[s]["APr"] - base[s]["APr"] for s in common)
                lift = f"{gain:+.3f}" if gain == gain else "-"  # no rare group (the balanced ceiling)
        rows.append([name, " ".join(METHODS[name]) or "-", *cells, lift,
                     f"{statistics.fmean(r['wall_s'] for r in runs.values()) / 60:.1f}"])
    body = markdown_table(["method", "overrides", *KEYS, "APr vs baseline (same seeds)", "wall min"], rows)
    body += (f"\n\n`{CONFIG}` trained {args.iterations if not args.quick else 4} iterations per run on the "
             f"long-tailed shapes (`data.shapes.imbalance={args.imbalance:g}`: circle, rectangle, triangle, "
             "hexagon from most to least frequent; val balanced), seeds "
             f"{', '.join(sorted({s for r in results.values() for s in r}))} (each cell: every seed, "
             "then the mean). APr / APc / APf: AP "
             "averaged over the classes held by fewer than 10 / 10-100 / more than 100 training images "
             "(LVIS's bins); recall_r: the rare classes' recall at IoU 0.5. "
             + ("The ceiling is the same recipe on the balanced split. " if results.get("balanced (ceiling)")
                else "No balanced-data ceiling run yet (`--methods 'balanced (ceiling)'`). ")
             + "smote_refit is the baseline run of the same seed with its region "
             "classifier re-fitted on SMOTE-balanced fc7 vectors of the training boxes (tools/rebalance.py; "
             "its wall time is the re-fit's, after the baseline's training). Each run's command is kept in benchmarks/results/imbalance.json.")
    finish(args, "imbalance", "Rare classes on long-tailed shapes (Faster R-CNN)", body, figures)
    return 0 if all(results.get(m) for m in methods) else 1


if __name__ == "__main__":
    sys.exit(main())
