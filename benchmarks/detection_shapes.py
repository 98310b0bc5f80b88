"""Box AP of every detection head on shapes val after a bounded CPU training run each.

Runs tools/train.py exactly as a user would, once per recipe (iterations chosen so that each run
fits in 15 minutes on the 2-core benchmark machine), then reads each run's metrics.jsonl.
This is the accuracy half of the lineage benchmark; benchmarks/lineage.py is the speed half.
"""
from __future__ import annotations

import hashlib
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._report import (base_parser, command_line, finish, markdown_table,  # noqa: E402
                                records_figures, run_train)

# recipe -> (config, iterations)
RECIPES = {
    "sppnet": ("configs/sppnet_resnet18_shapes.yaml", 3000),
    "fast_rcnn": ("configs/fast_rcnn_resnet18_shapes.yaml", 3000),
    "rcnn": ("configs/rcnn_resnet18_shapes.yaml", 2000),
    "faster_rcnn": ("configs/faster_rcnn_resnet18_shapes.yaml", 2000),
    "sliding_window": ("configs/sliding_window_resnet18_shapes.yaml", 3000),
}
# Val images of a run: on the recipes' 60 (data/base) two seeds' AP differed by 0.03-0.04; on 200,
# by 0.01 (SPPNet). Rows stored before this was a setting were run on 60 (``val_images``).
VAL_IMAGES = 200
LEGACY_VAL_IMAGES = 60
QUICK_VAL_IMAGES = 4


def train_one(config: str, iters: int, quick: bool, out: str, seed: int = 0,
              metric: str = "AP") -> tuple[dict, float]:
    """Train ``config`` for ``iters`` with ``runtime.seed=seed`` into ``out``, evaluated on the first
    ``VAL_IMAGES`` val images. Returns (the last evaluation record holding ``metric``, wall s)."""
    overrides = [f"solver.max_iter={iters}", f"solver.eval_period={max(1, iters // 2)}",
                 f"solver.checkpoint_period={max(1, iters // 2)}", f"data.shapes.num_val={VAL_IMAGES}"]
    if quick:
        overrides = ["solver.max_iter=4", "solver.eval_period=4", "data.batch_size=2",
                     "data.shapes.num_train=8", f"data.shapes.num_val={QUICK_VAL_IMAGES}",
                     "data.num_workers=0"]
    records, wall = run_train(config, [f"runtime.seed={seed}", *overrides], out)
    return [x for x in records if metric in x][-1], wall


def recipe_digest(config: str) -> str:
    """A short hash of ``config`` resolved (its bases and defaults included), stored with each run:
    a run of an edited recipe must not be averaged with the runs of the old one."""
    from detseg.config import load_config, to_yaml
    return hashlib.sha256(to_yaml(load_config(config)).encode()).hexdigest()[:12]


def train_seeds(config: str, iters: int, quick: bool, run_root: str, seeds: list[int], runs: dict,
                keys: tuple[str, ...], label: str = "") -> tuple[int | None, list[int]]:
    """``train_one`` per seed into ``run_root/seed<seed>``, each run's ``keys`` (the first is the
    metric its evaluation record must hold), wall time, command and date added to ``runs`` under
    the seed. A seed whose run fails is reported in one stderr line and the other seeds still run.

    Returns:
        (the iteration of the last successful run's last evaluation, None if none ran; the seeds
        whose runs failed).
    """
    digest = recipe_digest(config)
    failed, last = [], None
    for seed in seeds:
        try:
            last, wall = train_one(config, iters, quick, os.path.join(run_root, f"seed{seed}"), seed,
                                   keys[0])
        except RuntimeError as e:  # the other seeds still run: hours of them must not be lost
            print(f"{label}seed {seed}: {e}", file=sys.stderr, flush=True)
            failed.append(seed)
            continue
        print(f"{label}seed {seed}: " + ", ".join(f"{k} {last[k]:.3f}" for k in keys)
              + f" in {wall / 60:.1f} min", flush=True)
        runs[str(seed)] = {**{k: last[k] for k in keys}, "wall_s": wall, "command": command_line(),
                           "date": time.strftime("%Y-%m-%d %H:%M"), "recipe": digest,
                           "iterations": last["iter"]}  # a time-budgeted recipe fits its own
    return (last["iter"] if last is not None else None), failed


# Figures of the last full-length run of each recipe, so that ``--only`` updates its rows and
# keeps the others (the table says which run each row comes from).
STORE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "detection_shapes.json")


def load_store(path: str) -> dict:
    """The figures stored at ``path`` by an earlier full run ({} when there are none)."""
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def save_store(path: str, figures: dict) -> None:
    """Write ``figures`` to ``path`` atomically (a killed run leaves the old file)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(figures, f, indent=2)
    os.replace(path + ".tmp", path)


def seed_runs(entry: dict) -> dict:
    """A stored recipe's runs, ``{seed (str): run}``. An entry from before seeds were recorded is
    one run of seed 0 (``runtime.seed``'s default)."""
    if "seeds" in entry:
        return dict(entry["seeds"])
    return {"0": {k: entry[k] for k in ("AP", "AP50", "wall_s", "command", "date") if k in entry}}


def val_images(entry: dict) -> int:
    """How many val images a stored recipe's runs were evaluated on."""
    return entry.get("val_images", LEGACY_VAL_IMAGES)


def previous_runs(entry: dict | None, config: str, iterations: int, val: int = VAL_IMAGES) -> dict:
    """The stored runs of a recipe (``seed_runs``) that a new run of ``config`` for ``iterations``
    on ``val`` val images joins: none when the recipe's config file, length or val split changed
    since; of the others, those whose recorded ``recipe`` digest differs from the config's now (a
    run from before digests were recorded is kept)."""
    if not entry or entry.get("config") != config or entry.get("iterations") != iterations \
            or val_images(entry) != val:
        return {}
    runs = seed_runs(entry)
    if any("recipe" in r for r in runs.values()):
        digest = recipe_digest(config)
        runs = {s: r for s, r in runs.items() if r.get("recipe", digest) == digest}
    return runs


def summarise(config: str, iterations: int, runs: dict, val: int = VAL_IMAGES,
              keys: tuple[str, ...] = ("AP", "AP50")) -> dict:
    """A recipe's stored figures: every seed's run and the means of ``keys`` and wall time."""
    mean = lambda key: statistics.fmean(r[key] for r in runs.values())  # noqa: E731
    last = max(runs.values(), key=lambda r: r["date"])
    return {**{k: mean(k) for k in keys}, "iterations": iterations, "wall_s": mean("wall_s"),
            "val_images": val, "config": config, "command": last["command"], "date": last["date"],
            "seeds": dict(sorted(runs.items(), key=lambda kv: int(kv[0])))}


def seeded_parser(doc: str, iterations: int | None = None):
    """The parser of a one-recipe accuracy benchmark: ``--quick``, ``--json`` and the rest of
    ``base_parser``, plus ``--iterations`` (default ``iterations``), ``--seeds`` and ``--keep-run``."""
    p = base_parser(doc)
    p.add_argument("--iterations", type=int, default=iterations,
                   help="solver.max_iter" + (f" (default {iterations})" if iterations else " (default: the config's)"))
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="runtime.seed of each run (default 0)")
    p.add_argument("--keep-run", metavar="DIR", help="keep the run folders (checkpoints, metrics) here, "
                                                     "one per seed")
    return p


def run_recipe(args, config: str, iterations: int, store: str, keys: tuple[str, ...],
               label: str) -> tuple[dict | None, list[int]]:
    """Train ``config`` once per ``args.seeds`` (``train_seeds``), join the runs stored in ``store``
    of the same recipe, length and val split, and store the result (not for --quick / --no-write).

    Returns:
        (``summarise``'s figures, None when no seed ran; the seeds whose runs failed).
    """
    val = QUICK_VAL_IMAGES if args.quick else VAL_IMAGES
    runs = previous_runs(None if args.quick else load_store(store), config, iterations, val)
    with tempfile.TemporaryDirectory() as tmp:
        # a failed seed is reported on stderr; the seeds that ran are still reported
        last_iter, failed = train_seeds(config, iterations, args.quick, args.keep_run or tmp, args.seeds,
                                        runs, keys, label=label)
    if last_iter is None:
        return None, failed
    # a recipe with solver.max_minutes stops where its budget ends: its stored length is the
    # ceiling asked for (what later runs join on), each seed's run keeps the iterations it did
    figures = summarise(config, iterations if budgeted(config) else last_iter, runs, val, keys)
    if records_figures(args):
        save_store(store, figures)
    return figures, failed


def budgeted(config: str) -> bool:
    """Whether ``config`` fits its length to a time budget (``solver.max_minutes``)."""
    from detseg.config import load_config
    return load_config(config).solver.max_minutes is not None


def iterations_cell(figures: dict) -> str:
    """The iterations run: the recipe's length, or for a time-budgeted recipe each seed's fitted
    length and the ceiling ('1340 / 1362 of at most 4000')."""
    done = [r.get("iterations", figures["iterations"]) for r in seed_runs(figures).values()]
    if all(n == figures["iterations"] for n in done):
        return str(figures["iterations"])
    return " / ".join(map(str, done)) + f" of at most {figures['iterations']}"


def seeds_row(figures: dict, keys: tuple[str, ...]) -> list:
    """A table row: config, iterations, mean wall minutes, the seeds, then each key per seed."""
    return [figures["config"], iterations_cell(figures), f"{figures['wall_s'] / 60:.1f}",
            ", ".join(seed_runs(figures)), *(per_seed(figures, k) for k in keys)]


def per_seed(f: dict, key: str) -> str:
    """'0.581' for one run; '0.581 / 0.574 (0.578)' (each seed, then the mean) for several."""
    runs = list(seed_runs(f).values())
    if len(runs) < 2:
        return f"{f[key]:.3f}"
    return " / ".join(f"{r[key]:.3f}" for r in runs) + f" ({f[key]:.3f})"


def main(argv=None) -> int:
    p = base_parser(__doc__)
    p.add_argument("--only", nargs="*", choices=list(RECIPES), help="train only these recipes")
    p.add_argument("--seeds", nargs="+", type=int, default=[0],
                   help="runtime.seed of each run (default 0). A recipe's row keeps its stored runs of "
                        "other seeds with the same config and iterations and shows each seed's AP "
                        "and their mean, so `--seeds 1` adds a second seed to a recipe's last run")
    args = p.parse_args(argv)
    names = args.only or list(RECIPES)
    if args.quick:
        names = names[:1]
    figures = {} if args.quick else load_store(STORE)
    val = QUICK_VAL_IMAGES if args.quick else VAL_IMAGES
    failed, ran = [], []  # one recipe's failed run must not lose the others' hours
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            config, iters = RECIPES[name]
            runs = previous_runs(figures.get(name), config, iters, val)
            last_iter, failed_seeds = train_seeds(config, iters, args.quick, os.path.join(tmp, name),
                                                  args.seeds, runs, ("AP", "AP50"),
                                                  label=f"detection_shapes: {name} ")
            if failed_seeds:
                failed.append(name)
            if last_iter is not None:
                figures[name] = summarise(config, last_iter, runs, val)
                ran.append(name)
    if not ran:
        return 1
    if records_figures(args):
        save_store(STORE, figures)
    rows = [[name, f["config"], f["iterations"], val_images(f), f"{f['wall_s'] / 60:.1f}",
             ", ".join(seed_runs(f)), per_seed(f, "AP"), per_seed(f, "AP50"),
             " / ".join(r.get("date", "") for r in seed_runs(f).values())]
            for name, f in sorted(figures.items(), key=lambda kv: list(RECIPES).index(kv[0]))]
    body = markdown_table(["head", "config", "iterations", "val images",
                           "wall min (whole train.py run, mean)", "seeds", "box AP", "box AP50", "run"], rows)
    body += ("\n\nFrom scratch (no pretrained weights can be downloaded here), CPU, COCO box AP "
             "(pycocotools) on shapes val (the first 200 images; rows run before 200 was the split were "
             "evaluated on the first 60), boxes mapped back to the files' pixels. "
             "With several seeds (`runtime.seed`, `--seeds`) the AP cells give each seed's figure, then "
             "their mean; the command of each run is kept in benchmarks/results/detection_shapes.json. "
             "Each row is the last run of that recipe (`--only NAME` reruns one and keeps the other "
             "rows; the run column dates each); `python benchmarks/detection_shapes.py` reruns all.")
    finish(args, "detection_shapes", "Detection heads on shapes (accuracy)", body, figures)
    if failed:
        print(f"detection_shapes: {len(failed)} of {len(names)} recipes had failed runs "
              f"({', '.join(failed)}); their rows keep what did run", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
