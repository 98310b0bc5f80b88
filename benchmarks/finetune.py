"""Fine-tuning from a trained detector vs training from scratch, on a dataset that shares some
classes with the pre-training data and not others.

Pre-trains Faster R-CNN (ResNet-18 FPN) and FCN-8s on the built-in shapes (circle, rectangle,
triangle, hexagon), then trains each on a second shapes dataset (star, ellipse, cross, circle,
triangle; other images) for the same iterations twice: from the pre-trained checkpoint
(``--init-from``: circle and triangle rows carried over by name, the rest fresh) and from
scratch. Same config, schedule and seed for both; box AP / mIoU on the second dataset's val split
at several iteration counts. Every run is ``tools/train.py`` as a user runs it.
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


def run_task(name: str, seeds: list[int], num_val: int, quick: bool, tmp: str) -> dict:
    config, metric, pre_iters, iters, data = TASKS[name]
    quick_data = ["data.batch_size=2", "data.num_workers=0"]
    if quick:
        pre_iters, iters = 4, 4
        data = ["data.shapes.num_train=8", "data.shapes.num_val=4"]
    pre_dir = os.path.join(tmp, name, "pretrain")
    pre, pre_wall = run_train(config, [*schedule(pre_iters, 1), *data, *(quick_data if quick else [])],
                              pre_dir)
    out = {"metric": metric, "pretrain": {"iterations": pre_iters, metric: curve(pre, metric)[-1][1],
                                          "wall_s": pre_wall}, "seeds": {}}
    ckpt = os.path.join(pre_dir, "best.pth")
    for seed in seeds:
        runs = {}
        for mode in ("finetune", "scratch"):
            extra = [f"--init-from={ckpt}"] if mode == "finetune" else []
            overrides = [*schedule(iters, 2 if quick else EVALS), *second_data(seed, num_val, quick),
                         f"runtime.seed={seed}", *(quick_data if quick else []), *extra]
            records, wall = run_train(config, overrides, os.path.join(tmp, name, f"{mode}_{seed}"))
            runs[mode] = {"curve": curve(records, metric), "wall_s": wall}
            print(f"{name} seed {seed} {mode}: {runs[mode]['curve']}", flush=True)
        final_scratch = runs["scratch"]["curve"][-1][1]
        reach = first_reaching(runs["finetune"]["curve"], final_scratch)
        runs["finetune_reaches_scratch_final_at"] = reach
        runs["iteration_speedup"] = iters / reach if reach else None
        out["seeds"][str(seed)] = runs
    return out


def table(name: str, task: dict) -> str:
    metric = task["metric"]
    seeds = task["seeds"]
    iters = [it for it, _ in next(iter(seeds.values()))["scratch"]["curve"]]
    header = ["seed", "start"] + [f"{metric} @ {it}" for it in iters] + \
        ["iteration where fine-tuning reaches scratch's final", "speedup (iterations)"]
    rows = []
    for seed, runs in seeds.items():
        for mode in ("finetune", "scratch"):
            values = [f"{v:.3f}" for _, v in runs[mode]["curve"]]
            reach = runs["finetune_reaches_scratch_final_at"]
            tail = ([reach if reach else "never", f"{runs['iteration_speedup']:.1f}x"
                     if runs["iteration_speedup"] else "-"] if mode == "finetune" else ["", ""])
            label = "fine-tuned from pre-trained" if mode == "finetune" else "from scratch"
            rows.append([seed, label, *values, *tail])
    pre = task["pretrain"]
    made = f"; run {task['date']}, `{task['command']}`" if task.get("date") else ""
    made += f"; {task['note']}" if task.get("note") else ""
    return (f"**{name}** (`{TASKS[name][0]}`; pre-trained {pre['iterations']} iterations on the "
            f"built-in shapes: {metric} {pre[metric]:.3f} there{made})\n\n" + markdown_table(header, rows))


def summary(task: dict) -> dict:
    metric = task["metric"]
    final = {mode: statistics.mean(r[mode]["curve"][-1][1] for r in task["seeds"].values())
             for mode in ("finetune", "scratch")}
    speedups = [r["iteration_speedup"] or 0.0 for r in task["seeds"].values()]
    return {"metric": metric, "finetune": final["finetune"], "scratch": final["scratch"],
            "gain": final["finetune"] - final["scratch"], "speedup_min": min(speedups)}


def main(argv=None) -> int:
    p = base_parser(__doc__)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--num-val", type=int, default=120, help="val images of the second dataset")
    p.add_argument("--only", nargs="*", choices=list(TASKS))
    args = p.parse_args(argv)
    names = args.only or list(TASKS)
    if args.quick:  # a smoke run of the script: one task is enough
        names = names[:1]
    seeds = args.seeds[:1] if args.quick else args.seeds
    results = {}
    if not args.quick and os.path.exists(STORE):
        with open(STORE, encoding="utf-8") as f:
            results = {k: v for k, v in json.load(f).items() if k in TASKS}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            try:
                results[name] = run_task(name, seeds, args.num_val, args.quick, tmp)
            except RuntimeError as e:
                print(e, file=sys.stderr)
                return 1
            results[name].update(date=time.strftime("%Y-%m-%d %H:%M"), command=command_line())
            if records_figures(args):
                os.makedirs(os.path.dirname(STORE), exist_ok=True)
                with open(STORE + ".tmp", "w", encoding="utf-8") as f:
                    json.dump(results, f, indent=1)
                os.replace(STORE + ".tmp", STORE)
    results = {name: results[name] for name in TASKS if name in results}
    sums = {name: summary(task) for name, task in results.items()}
    figures = {"finetune": {}, "scratch": {}, "speedup": {}, "gain": {}, "runs": results}
    keys = {"AP": "box_ap", "mIoU": "mIoU"}
    for name, s in sums.items():
        key = keys[s["metric"]]
        figures["finetune"][key] = s["finetune"]
        figures["scratch"][key] = s["scratch"]
        figures["gain"][key] = s["gain"]
        figures["speedup"]["iterations" if name == "faster_rcnn" else f"iterations_{name}"] = s["speedup_min"]
    body = "\n\n".join(table(name, task) for name, task in results.items())
    rows = [[name, s["metric"], f"{s['scratch']:.3f}", f"{s['finetune']:.3f}", f"{s['gain']:+.3f}",
             f"{s['speedup_min']:.1f}x"] for name, s in sums.items()]
    body += "\n\n" + markdown_table(
        ["task", "metric", "from scratch, final (mean of the seeds)", "fine-tuned, final",
         "gain", "iterations to scratch's final: speedup (worst seed)"], rows)
    body += (f"\n\nSecond dataset: shapes {NEW_CLASSES} (circle and triangle shared with the "
             f"pre-training data, star, ellipse and cross new), seed 100 + run seed, 300 train / "
             f"{args.num_val} val images. Fine-tuning and scratch runs share config, schedule "
             f"(cosine over the run, 100 warm-up iterations) and seed; only `--init-from` differs. "
             f"From scratch means no pre-trained weights at all (none can be downloaded here).")
    finish(args, "finetune", "Fine-tuning from a trained detector vs from scratch", body, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
