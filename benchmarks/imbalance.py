"""Rare classes on long-tailed shapes: each imbalanced-data method against the plain recipe.

Four tasks, each a shapes recipe trained on the long-tailed shapes (``data.shapes.classes``,
default all eight shapes the generator draws, and ``data.shapes.imbalance``, default 100: the first
class 100x as frequent as the last, exponential decay between, the val split balanced), once per
method and seed, with the same iterations:

- ``faster_rcnn``: box AP and LVIS's split by training frequency (APr / APc / APf,
  ``evaluator.frequency_bins``), the rare classes' recall at IoU 0.5;
- ``mask_rcnn``: the same for boxes and masks (``segm_APr`` ...);
- ``fcn``: FCN-8s's mIoU and the rare / common / frequent classes' mean IoU (``mIoU_r`` ...);
- ``classify``: top-1, balanced accuracy and the groups' mean per-class accuracy (``accuracy_r`` ...).

The detectors and FCN train on the same 300 long-tailed images (the detection recipes' split
size; with the eight classes, pentagon, the rarest, is in 3 of them, the one rare class by LVIS's
bins, and cross in 13); the classifier on 800 images. The balanced-data run of the same recipe is
the ceiling. Each run is ``tools/train.py`` in a fresh process, as a user would run it;
``smote_refit`` is the baseline run of the same seed with its last layer re-fitted on
SMOTE-balanced feature vectors (``tools/rebalance.py``, the same re-fit as
``solver.rebalance.method: smote`` in a recipe), ``borderline_refit`` the same with
Borderline-SMOTE (synthetic vectors only from the rare samples near the other classes).

Runs are kept in benchmarks/results/imbalance.json, per task: a later call with other
``--methods`` or ``--seeds`` adds its runs to the table of the same recipe, length, imbalance,
classes and CPU; ``--report`` writes the stored tables again without training.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# a task's table holds one machine's runs: wall times and, with solver.amp, the precision depend on it
from benchmarks._report import (base_parser, command_line, finish, machine_key, markdown_table,  # noqa: E402
                                records_figures, run_tool, run_train)
from benchmarks.detection_shapes import load_store, recipe_digest, save_store  # noqa: E402
from detseg.data.shapes import VOCABULARY, check_classes  # noqa: E402

CEILING = "balanced (ceiling)"
# the baseline run's checkpoint, its last layer re-fitted on SMOTE- (or Borderline-SMOTE-) balanced
# vectors (tools/rebalance.py --method <value>): no training run of their own, so they need the baseline's
SMOTE_REFIT = "smote_refit"
REFITS = {SMOTE_REFIT: "smote", "borderline_refit": "borderline_smote"}
_REFIT_ROWS = {name: [f"tools/rebalance.py --method {method}"] for name, method in REFITS.items()}


@dataclass
class Task:
    """One recipe of the benchmark: what it reports and which methods it compares."""

    title: str
    config: str
    keys: tuple[str, ...]  # the metrics of each run's last evaluation, in table order
    lift: str  # the rare-class figure each method is compared with the baseline on
    iterations: int  # default solver.max_iter: a run within 15 minutes on a 2-core AVX2 CPU
    methods: dict[str, list[str]]  # method -> overrides (the long tail set by --imbalance)
    data: tuple[str, ...] = ()  # overrides of every run of the task (its training split)
    quick: tuple[str, ...] = ()  # --quick's own, after QUICK's


def _loss(head: str) -> dict[str, list[str]]:
    return {"focal": [f"model.heads.{head}.loss.kind=focal"],
            "effective_weights": [f"model.heads.{head}.loss.class_weight=effective"],
            "inverse_weights": [f"model.heads.{head}.loss.class_weight=inverse"],
            # Cao et al. 2019's deferred re-weighting: the plain loss for 80% of the run, then weighted
            # (their switch, at the schedule's last step); on a cosine schedule the lr is a tenth by
            # then, so also from half the run
            "deferred_weights": [f"model.heads.{head}.loss.class_weight=inverse",
                                 f"model.heads.{head}.loss.class_weight_from=0.8"],
            "deferred_weights_half": [f"model.heads.{head}.loss.class_weight=inverse",
                                      f"model.heads.{head}.loss.class_weight_from=0.5"],
            "seesaw": [f"model.heads.{head}.loss.kind=seesaw"]}


_DET = {"baseline": [],
        "repeat_factor": ["data.sampler=repeat_factor", "data.repeat_threshold=0.3"],
        "class_aware": ["data.sampler=class_aware"],
        "sqrt_frequency": ["data.sampler=sqrt_frequency"],
        "undersample": ["data.sampler=undersample"],
        **_loss("det"),
        # the RPN's objectness (object or not, no class): focal against the easy background anchors
        "rpn_focal": ["model.heads.det.proposals.rpn_loss=focal"],
        "copy_paste": ["data.copy_paste.prob=0.5", "data.copy_paste.rarity=1.0"],
        # the two that lift different groups (Seesaw the rare class, copy-paste the common ones), together
        "seesaw_copy_paste": ["model.heads.det.loss.kind=seesaw", "data.copy_paste.prob=0.5",
                              "data.copy_paste.rarity=1.0"],
        **_REFIT_ROWS,
        CEILING: []}
TASKS = {
    "faster_rcnn": Task("Faster R-CNN", "configs/faster_rcnn_resnet18_shapes.yaml",
                        ("AP", "APr", "APc", "APf", "recall_r"), "APr", 700, _DET),
    "mask_rcnn": Task("Mask R-CNN", "configs/mask_rcnn_resnet18_fpn_shapes.yaml",
                      ("AP", "APr", "APf", "segm_AP", "segm_APr", "segm_APc", "segm_APf"), "segm_APr", 500, _DET),
    "fcn": Task("FCN-8s", "configs/fcn8s_resnet18_shapes.yaml",
                ("mIoU", "mIoU_r", "mIoU_c", "mIoU_f"), "mIoU_r", 1000,
                {"baseline": [], **{k: _DET[k] for k in ("class_aware", "sqrt_frequency", "undersample")},
                 **{k: v for k, v in _loss("seg").items() if k != "seesaw"},  # seesaw: not for pixels
                 CEILING: []},
                data=("data.shapes.num_train=300",)),
    "classify": Task("image classification", "configs/classify_resnet18_shapes.yaml",
                     ("top1", "balanced_accuracy", "accuracy_r", "accuracy_c", "accuracy_f"), "accuracy_r", 600,
                     {"baseline": [], **_loss("cls"), **_REFIT_ROWS, CEILING: []},
                     # quick: one image is one object, so 48 give SMOTE two of every class
                     data=("data.shapes.num_train=800",), quick=("data.shapes.num_train=48",)),
}
# what a task's runs stored before the store kept their classes and machine were measured with
LEGACY_CLASSES = ["circle", "rectangle", "triangle", "hexagon"]
LEGACY_MACHINE = "x86_64, AMD EPYC (AVX2 only), 2 cores"
STORE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "imbalance.json")
QUICK = ["solver.max_iter=4", "solver.eval_period=4", "data.batch_size=2", "data.shapes.num_train=16",
         "data.shapes.num_val=8", "data.num_workers=0"]


def run_method(task: Task, name: str, classes: list[str], imbalance: float, iterations: int, seed: int,
               quick: bool, out: str) -> dict:
    """One training run of ``task``'s recipe with method ``name`` on ``classes`` (most to least
    frequent); its last evaluation's keys and wall s."""
    # quick: four classes and a tail of 4 at most, so that its 16 images hold two or more objects
    # of every class (SMOTE draws between two)
    tail = 1.0 if name == CEILING else min(imbalance, 4.0) if quick else imbalance
    classes = classes[:4] if quick else classes
    args = [*task.data, f"data.shapes.classes=[{','.join(classes)}]", f"data.shapes.imbalance={tail}",
            f"runtime.seed={seed}", *task.methods[name]]
    args += [*QUICK, *task.quick] if quick else [f"solver.max_iter={iterations}", f"solver.eval_period={iterations}",
                                 f"solver.checkpoint_period={iterations}"]
    records, wall = run_train(task.config, args, out)
    last = [r for r in records if task.keys[0] in r][-1]
    return {**{k: last.get(k, float("nan")) for k in task.keys}, "wall_s": wall, "iter": last["iter"]}


def read_keys(task: Task, folder: str) -> dict:
    """``task``'s keys from the metrics.json that tools/eval.py (or rebalance.py's evaluation)
    wrote into ``folder`` (NaN for a key it did not report)."""
    with open(os.path.join(folder, "metrics.json"), encoding="utf-8") as f:
        last = json.load(f)
    return {k: last.get(k, float("nan")) for k in task.keys}


def refit_baseline(task: Task, run: str, method: str) -> dict:
    """tools/rebalance.py --method ``method`` --eval on the baseline run folder ``run``'s best.pth;
    the re-fitted model's keys and the re-fit's wall s."""
    out = os.path.join(run, method)
    wall = run_tool("rebalance.py", ["--weights", os.path.join(run, "best.pth"), "--output", out,
                                     "--method", method, "--eval", "--overwrite"], "tools/rebalance.py")
    return {**read_keys(task, os.path.join(out, "eval_after")), "wall_s": wall, "iter": None}


def ceiling_on_long_tail(task: Task, run: str, imbalance: float) -> dict:
    """The balanced-data run ``run`` evaluated again (tools/eval.py, same val images) with the
    rare / common / frequent groups of the long-tailed split: its own split has no rare class, so
    this is what its ``APr`` ... are compared on (the moonshot: APr within 0.05 of the ceiling's)."""
    out = os.path.join(run, "eval_long_tail")
    run_tool("eval.py", ["--weights", os.path.join(run, "best.pth"), f"data.shapes.imbalance={imbalance}",
                         "--output", out, "--overwrite"], "tools/eval.py")
    return read_keys(task, out)


def stored_tasks(stored: dict) -> dict:
    """The store's tasks; a store from before there were several holds the Faster R-CNN one."""
    if "results" in stored:
        return {"faster_rcnn": stored}
    return stored.get("tasks", {})


def format_task(key: str, task: Task, entry: dict) -> str:
    """One task's table (each cell: every seed, then the mean) and what it measured."""
    results = entry["results"]
    rows = []
    base = results.get("baseline", {})
    for name, runs in sorted(results.items(), key=lambda kv: list(task.methods).index(kv[0])):
        if not runs:
            continue
        cells = []
        for k in task.keys:
            vals = [r[k] for r in runs.values()]
            cell = " / ".join(f"{v:.3f}" for v in vals)
            cells.append(cell + (f" ({statistics.fmean(vals):.3f})" if len(vals) > 1 else ""))
        lift = ""
        if base and name != "baseline":
            common = [s for s in runs if s in base]
            if common:
                gain = statistics.fmean(runs[s][task.lift] - base[s][task.lift] for s in common)
                lift = f"{gain:+.3f}" if gain == gain else "-"  # no rare group (the balanced ceiling)
        rows.append([name, " ".join(task.methods[name]) or "-", *cells, lift,
                     f"{statistics.fmean(r['wall_s'] for r in runs.values()) / 60:.1f}"])
    seeds = ", ".join(sorted({s for r in results.values() for s in r}))
    table = markdown_table(["method", "overrides", *task.keys, f"{task.lift} vs baseline (same seeds)",
                            "wall min"], rows)
    data = f" ({', '.join(f'`{d}`' for d in task.data)})" if task.data else ""
    classes = entry.get("classes", LEGACY_CLASSES)
    return (f"### {task.title} (`--task {key}`)\n\n{table}\n\n`{task.config}`{data} trained "
            f"{entry['iterations']} iterations per run, seeds {seeds}, on {len(classes)} classes "
            f"({', '.join(classes)}, most to least frequent, `data.shapes.imbalance={entry['imbalance']:g}`). "
            f"Machine: {entry.get('machine', LEGACY_MACHINE)}."
            + ("" if results.get(CEILING) else f" No balanced-data ceiling run yet (`--methods '{CEILING}'`).")
            + "\n")


def report_body(tasks: dict) -> str:
    """BENCHMARKS.md's section: every stored task's table, then what the columns mean."""
    body = "\n".join(format_task(k, TASKS[k], tasks[k]) for k in TASKS if k in tasks)
    body += ("\nLong-tailed shapes: each task's classes from most to least frequent, exponential decay "
             "between, val balanced; a task's runs share its classes, tail, length and machine (a call on "
             "another CPU or class list starts the task's table afresh). Each cell gives every seed's "
             "figure, then the mean. APr / APc / APf (and the `segm_`, `mIoU_`, `accuracy_` groups): the "
             "figure averaged over the classes held by at most 10 / 10-100 / more than 100 training images "
             "(LVIS's bins); recall_r: the rare classes' recall at IoU 0.5. The ceiling is the same recipe "
             "on the balanced split, its figures grouped by the long-tailed split's counts (tools/eval.py "
             "on its checkpoint: the same val images, the long tail's rare classes). smote_refit is the "
             "baseline run of the same seed with its last layer (region classifier: on fc7 of the training "
             "boxes and background proposals; image classifier: on its embedding) re-fitted on "
             "SMOTE-balanced vectors (tools/rebalance.py, as `solver.rebalance.method: smote` does after "
             "training; its wall time is the re-fit's, after the baseline's training); borderline_refit the same "
             "with Borderline-SMOTE (new vectors only from rare samples whose neighbours are mostly of other "
             "classes). Each run's command is kept in benchmarks/results/imbalance.json.")
    return body


def main(argv=None) -> int:
    p = base_parser(__doc__)
    p.add_argument("--task", choices=list(TASKS), default="faster_rcnn")
    p.add_argument("--methods", nargs="+",
                   help="which rows to run (default: all of the task's; the *_refit rows need baseline before them)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--iterations", type=int,
                   help="solver.max_iter of every run (default: the task's, a run within 15 minutes on a "
                        "2-core AVX2 CPU)")
    p.add_argument("--imbalance", type=float, default=100.0)
    p.add_argument("--classes", nargs="+", default=list(VOCABULARY), metavar="SHAPE",
                   help=f"the shapes, most to least frequent (default all eight: {' '.join(VOCABULARY)})")
    p.add_argument("--keep-run", metavar="DIR",
                   help="keep the run folders here (<task>/<method>_<seed>); the *_refit rows then also re-fit "
                        "a baseline run kept there by an earlier call")
    p.add_argument("--report", action="store_true",
                   help="write the stored runs' tables again (BENCHMARKS.md and --json), training nothing")
    args = p.parse_args(argv)
    if args.report:
        stored = stored_tasks(load_store(STORE))
        if not stored:
            print(f"error: no stored runs in {os.path.relpath(STORE)}", file=sys.stderr)
            return 2
        finish(args, "imbalance", "Rare classes on long-tailed shapes", report_body(stored), {"tasks": stored})
        return 0
    task = TASKS[args.task]
    unknown = sorted(set(args.methods or ()) - set(task.methods))
    if unknown:
        p.error(f"--task {args.task} has no method {', '.join(unknown)} (it has {', '.join(task.methods)})")
    try:
        classes = list(check_classes(args.classes))
    except ValueError as e:
        p.error(str(e))
    iterations = args.iterations or task.iterations
    methods = args.methods or list(task.methods)
    # quick: the baseline, copy-paste (a data path of its own) and the SMOTE re-fit, 4 iterations
    if args.quick:
        methods = [m for m in methods if m in ("baseline", "copy_paste", SMOTE_REFIT)] or methods[:1]
    seeds = args.seeds[:1] if args.quick else args.seeds
    # the stored runs of this recipe, length and tail, which this call's runs join (or replace)
    digest = recipe_digest(task.config)
    tasks = {} if args.quick else stored_tasks(load_store(STORE))
    stored = tasks.get(args.task, {})
    machine = machine_key()
    same = (stored.get("iterations"), stored.get("imbalance"), stored.get("recipe"),
            stored.get("classes", LEGACY_CLASSES), stored.get("machine", LEGACY_MACHINE)) == \
        (iterations, args.imbalance, digest, classes, machine)
    results: dict = {m: dict(r) for m, r in stored.get("results", {}).items()} if same else {}
    baseline_runs = {}  # seed -> the baseline's run folder (the *_refit rows re-fit its checkpoint)
    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.join(args.keep_run, args.task) if args.keep_run else tmp
        for seed in seeds:
            kept = os.path.join(root, f"baseline_{seed}")
            if os.path.isfile(os.path.join(kept, "best.pth")):
                baseline_runs[seed] = kept
        for name in methods:
            results.setdefault(name, {})
            for seed in seeds:
                folder = os.path.join(root, f"{name.split()[0]}_{seed}")
                try:
                    if name in REFITS:
                        if seed not in baseline_runs:
                            raise RuntimeError("re-fits the baseline's checkpoint: list baseline before it "
                                               "in --methods")
                        r = refit_baseline(task, baseline_runs[seed], REFITS[name])
                    else:
                        r = run_method(task, name, classes, args.imbalance, iterations, seed, args.quick, folder)
                        if name == CEILING:
                            r.update(ceiling_on_long_tail(task, folder, args.imbalance))
                    if name == "baseline":
                        baseline_runs[seed] = folder
                except RuntimeError as e:
                    print(f"imbalance: {args.task} {name} seed {seed}: {e}", file=sys.stderr, flush=True)
                    continue
                results[name][str(seed)] = {**r, "command": command_line(), "date": time.strftime("%Y-%m-%d %H:%M")}
                print(f"imbalance: {args.task} {name} seed {seed}: "
                      + ", ".join(f"{k} {r[k]:.3f}" for k in task.keys) + f" in {r['wall_s'] / 60:.1f} min",
                      flush=True)
    tasks[args.task] = {"config": task.config, "iterations": iterations, "imbalance": args.imbalance,
                        "classes": classes, "machine": machine, "recipe": digest,
                        "results": {m: r for m, r in results.items() if r}}
    figures = {"tasks": tasks}
    if records_figures(args):
        save_store(STORE, figures)
    finish(args, "imbalance", "Rare classes on long-tailed shapes", report_body(tasks), figures)
    return 0 if all(results.get(m) for m in methods) else 1


if __name__ == "__main__":
    sys.exit(main())
