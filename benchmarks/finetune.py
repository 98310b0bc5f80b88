"""Fine-tuning from a trained detector vs training from scratch, on a dataset that shares some
classes with the pre-training data and not others.

Pre-trains Faster R-CNN (ResNet-18 FPN) and FCN-8s on the built-in shapes (circle, rectangle,
triangle, hexagon), then trains each on a second shapes dataset (star, ellipse, cross, circle,
triangle; other images) for the same iterations three times: from the pre-trained checkpoint
(``--init-from``: circle and triangle rows carried over by name, the rest fresh), the same with the
pre-trained layers frozen while the learning rate warms up (``solver.freeze``, as the README's
fine-tuning recipe does), and from scratch. Same config, schedule and seed for all; box AP / mIoU
on the second dataset's val split at several iteration counts. Every run is ``tools/train.py`` as
a user runs it.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._report import (base_parser, command_line, finish, markdown_table,  # noqa: E402
                                records_figures, run_train)

NEW_CLASSES = "[star,ellipse,cross,circle,triangle]"
# task -> (config, metric, pre-training iterations, fine-tuning / scratch iterations, its data)
TASKS = {
    "faster_rcnn": ("configs/faster_rcnn_resnet18_shapes.yaml", "AP", 780, 480,
                    ["data.shapes.num_train=300"]),
    "fcn8s": ("configs/fcn8s_resnet18_shapes.yaml", "mIoU", 800, 400, ["data.shapes.num_train=300"]),
}
EVALS = 6  # evaluations along each fine-tuning / scratch run
# Figures of the last full run of each task, so that ``--only`` reruns one and keeps the other
# (each task's table says when and by which command it was made).
STORE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "finetune.json")


def second_data(seed: int, num_val: int, quick: bool) -> list[str]:
    sizes = (["data.shapes.num_train=8", "data.shapes.num_val=4"] if quick
             else [f"data.shapes.num_val={num_val}"])
    return [f"data.shapes.classes={NEW_CLASSES}", f"data.shapes.seed={100 + seed}", *sizes]


def schedule(iters: int, evals: int) -> list[str]:
    period = max(1, iters // evals)
    return [f"solver.max_iter={iters}", f"solver.eval_period={period}",
            f"solver.checkpoint_period={iters}"]


def curve(records: list[dict], metric: str) -> list[tuple[int, float]]:
    return [(r["iter"], r[metric]) for r in records if metric in r]


def first_reaching(points: list[tuple[int, float]], target: float) -> int | None:
    return next((it for it, v in points if v >= target), None)


FREEZE_ITERS = 100  # the warm-up: pre-trained layers wait while the LR ramps up and fresh rows settle
# mode -> (label, whether it starts from the pre-trained checkpoint, parts frozen at first)
MODES = {
    "finetune": ("fine-tuned, every layer trained from the start", True, False),
    "finetune_frozen": (f"fine-tuned, pre-trained layers frozen for the first {FREEZE_ITERS} iterations "
                        f"(the README's fine-tuning recipe)", True, True),
    "scratch": ("from scratch", False, False),
}
FROZEN_PARTS = {"faster_rcnn": "[backbone,fpn]", "fcn8s": "[backbone]"}


def mode_overrides(name: str, mode: str, ckpt: str) -> list[str]:
    _, init, frozen = MODES[mode]
    out = [f"--init-from={ckpt}"] if init else []
    if frozen:
        out += [f"solver.freeze.parts={FROZEN_PARTS[name]}", f"solver.freeze.iters={FREEZE_ITERS}"]
    return out


def run_task(name: str, seeds: list[int], modes: list[str], num_val: int, quick: bool, tmp: str,
             stored: dict | None = None, pretrained: str | None = None) -> dict:
    """Pre-train (or take ``pretrained``, whose figures ``stored`` holds), then run ``modes`` for
    each seed; the runs of other modes are kept from ``stored``."""
    config, metric, pre_iters, iters, data = TASKS[name]
    quick_data = ["data.batch_size=2", "data.num_workers=0"]
    if quick:
        pre_iters, iters = 4, 4
        data = ["data.shapes.num_train=8", "data.shapes.num_val=4"]
    if pretrained:
        out = {"metric": metric, "pretrain": stored["pretrain"], "seeds": {}}
        ckpt = pretrained
    else:
        pre_dir = os.path.join(tmp, name, "pretrain")
        pre, pre_wall = run_train(config, [*schedule(pre_iters, 1), *data, *(quick_data if quick else [])],
                                  pre_dir)
        out = {"metric": metric, "pretrain": {"iterations": pre_iters, metric: curve(pre, metric)[-1][1],
                                              "wall_s": pre_wall}, "seeds": {}}
        ckpt = os.path.join(pre_dir, "best.pth")
    for seed in seeds:
        kept = (stored or {}).get("seeds", {}).get(str(seed), {})
        # runs stored before each run recorded its own command carry their task's
        runs = {m: {"date": stored.get("date"), "command": stored.get("command"), **kept[m]}
                for m in MODES if m in kept and m not in modes}
        for mode in modes:
            overrides = [*schedule(iters, 2 if quick else EVALS), *second_data(seed, num_val, quick),
                         f"runtime.seed={seed}", *(quick_data if quick else []),
                         *mode_overrides(name, mode, ckpt)]
            records, wall = run_train(config, overrides, os.path.join(tmp, name, f"{mode}_{seed}"))
            runs[mode] = {"curve": curve(records, metric), "wall_s": wall,
                          "date": time.strftime("%Y-%m-%d %H:%M"), "command": command_line()}
            print(f"{name} seed {seed} {mode}: {runs[mode]['curve']}", flush=True)
        out["seeds"][str(seed)] = runs
    return out


def staying(points: list[tuple[int, float]], target: float) -> int | None:
    """The first evaluated iteration from which every later evaluation is at least ``target``."""
    out = None
    for it, v in points:
        out = (out or it) if v >= target else None
    return out


def reaching(runs: dict, mode: str, stay: bool = False) -> tuple[int | None, float | None]:
    """(first evaluated iteration where ``mode`` reaches scratch's final figure, or with ``stay``
    from which it stays there, iterations of the run / that iteration); (None, None) if never."""
    scratch = runs["scratch"]["curve"]
    reach = (staying if stay else first_reaching)(runs[mode]["curve"], scratch[-1][1])
    return reach, (scratch[-1][0] / reach if reach else None)


def table(name: str, task: dict) -> str:
    metric = task["metric"]
    seeds = task["seeds"]
    iters = [it for it, _ in next(iter(seeds.values()))["scratch"]["curve"]]
    header = ["seed", "start"] + [f"{metric} @ {it}" for it in iters] + \
        ["iteration where it first reaches scratch's final", "speedup (iterations)",
         "stays at or above it from", "speedup (stays)"]
    rows = []
    for seed, runs in seeds.items():
        for mode in (m for m in MODES if m in runs):
            values = [f"{v:.3f}" for _, v in runs[mode]["curve"]]
            tail = ["", "", "", ""]
            if mode != "scratch":
                tail = []
                for stay in (False, True):
                    reach, speedup = reaching(runs, mode, stay)
                    tail += [reach or "never", f"{speedup:.1f}x" if speedup else "-"]
            rows.append([seed, MODES[mode][0], *values, *tail])
    pre = task["pretrain"]
    made = ""
    for mode in MODES:  # which command made which rows (the runs of one mode come from one command)
        run = next((r[mode] for r in seeds.values() if mode in r), {})
        made += f"; {mode} rows: run {run['date']}, `{run['command']}`" if run.get("date") else ""
    if not made and task.get("date"):  # stored before each run recorded its own command
        made = f"; run {task['date']}, `{task['command']}`"
    made += f"; {task['note']}" if task.get("note") else ""
    return (f"**{name}** (`{TASKS[name][0]}`; pre-trained {pre['iterations']} iterations on the "
            f"built-in shapes: {metric} {pre[metric]:.3f} there{made})\n\n" + markdown_table(header, rows))


def summary(task: dict) -> dict:
    """Per fine-tuning mode run for every seed: final figure (mean of the seeds), scratch's, the
    gain and the worst seed's iteration speed-up."""
    seeds = list(task["seeds"].values())
    scratch = statistics.mean(r["scratch"]["curve"][-1][1] for r in seeds)
    out = {}
    for mode in (m for m in MODES if m != "scratch" and all(m in r for r in seeds)):
        final = statistics.mean(r[mode]["curve"][-1][1] for r in seeds)
        out[mode] = {"metric": task["metric"], "finetune": final, "scratch": scratch,
                     "gain": final - scratch,
                     "speedup_min": min(reaching(r, mode)[1] or 0.0 for r in seeds),
                     "speedup_stay_min": min(reaching(r, mode, True)[1] or 0.0 for r in seeds)}
    return out


def main(argv=None) -> int:
    p = base_parser(__doc__)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--num-val", type=int, default=120, help="val images of the second dataset")
    p.add_argument("--only", nargs="*", choices=list(TASKS))
    p.add_argument("--modes", nargs="+", choices=list(MODES),
                   help="runs to make (default: all; with --quick: finetune_frozen, scratch); the stored "
                        "runs of the other modes are kept")
    p.add_argument("--pretrained", metavar="CKPT",
                   help="the pre-trained checkpoint of an earlier full run of the one --only task (its "
                        "figures are read from the stored results), instead of pre-training again")
    p.add_argument("--report-only", action="store_true",
                   help="run nothing: the table and JSON from the stored results")
    args = p.parse_args(argv)
    names = [] if args.report_only else args.only or list(TASKS)
    if args.quick:  # a smoke run of the script: one task is enough
        names = names[:1]
    seeds = args.seeds[:1] if args.quick else args.seeds
    args.modes = args.modes or (["finetune_frozen", "scratch"] if args.quick else list(MODES))
    results = {}
    if args.report_only and not os.path.exists(STORE):
        print(f"--report-only: no stored results at {STORE}", file=sys.stderr)
        return 2
    if not args.quick and os.path.exists(STORE):
        with open(STORE, encoding="utf-8") as f:
            results = {k: v for k, v in json.load(f).items() if k in TASKS}
    if args.pretrained and (len(names) != 1 or names[0] not in results or args.quick):
        print("--pretrained needs one --only task with stored results of a full run", file=sys.stderr)
        return 2
    stored_runs = [results.get(n, {}).get("seeds", {}).get(str(s), {}) for n in names for s in seeds]
    if "scratch" not in args.modes and any("scratch" not in r for r in stored_runs):
        print("--modes without scratch needs stored scratch runs of every seed", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            try:
                task = run_task(name, seeds, args.modes, args.num_val, args.quick, tmp, results.get(name),
                                args.pretrained)
            except RuntimeError as e:
                print(e, file=sys.stderr)
                return 1
            results[name] = task
            if records_figures(args):
                os.makedirs(os.path.dirname(STORE), exist_ok=True)
                with open(STORE + ".tmp", "w", encoding="utf-8") as f:
                    json.dump(results, f, indent=1)
                os.replace(STORE + ".tmp", STORE)
    results = {name: results[name] for name in TASKS if name in results}
    figures = {"finetune": {}, "finetune_frozen": {}, "scratch": {}, "speedup": {}, "gain": {},
               "runs": results}
    keys = {"AP": "box_ap", "mIoU": "mIoU"}
    rows = []
    for name, task in results.items():
        for mode, s in summary(task).items():
            key = keys[s["metric"]]
            figures[mode][key] = s["finetune"]
            figures["scratch"][key] = s["scratch"]
            frozen = "_frozen" if mode == "finetune_frozen" else ""
            suffix = frozen + ("" if name == "faster_rcnn" else f"_{name}")
            figures["gain"][key + frozen] = s["gain"]
            figures["speedup"]["iterations" + suffix] = s["speedup_min"]
            figures["speedup"]["iterations_staying" + suffix] = s["speedup_stay_min"]
            rows.append([name, MODES[mode][0], s["metric"], f"{s['scratch']:.3f}", f"{s['finetune']:.3f}",
                         f"{s['gain']:+.3f}", f"{s['speedup_min']:.1f}x", f"{s['speedup_stay_min']:.1f}x"])
    body = "\n\n".join(table(name, task) for name, task in results.items())
    body += "\n\n" + markdown_table(
        ["task", "fine-tuning", "metric", "from scratch, final (mean of the seeds)", "fine-tuned, final",
         "gain", "iterations to first reach scratch's final: speedup (worst seed)",
         "iterations to stay at or above it: speedup (worst seed)"], rows)
    body += (f"\n\nSecond dataset: shapes {NEW_CLASSES} (circle and triangle shared with the "
             f"pre-training data, star, ellipse and cross new), seed 100 + run seed, 300 train / "
             f"{args.num_val} val images. Fine-tuning and scratch runs share config, schedule "
             f"(cosine over the run, 100 warm-up iterations) and seed; they differ only in "
             f"`--init-from` and, for the frozen rows, `solver.freeze` (parts "
             f"{', '.join(f'{k}: {v}' for k, v in FROZEN_PARTS.items())}). From scratch means no "
             f"pre-trained weights at all (none can be downloaded here). \"First reaches\": the first "
             f"evaluation at or above the scratch run's final figure; \"stays\": the first from which "
             f"every later evaluation is, since a run can fall back for a while (for instance when "
             f"frozen layers start training).")
    finish(args, "finetune", "Fine-tuning from a trained detector vs from scratch", body, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
