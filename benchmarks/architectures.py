"""The classic architectures side by side, as the notes compare them: parameters, FLOPs, CPU
images per second (train and test), and top-1 accuracy after equal wall time on the shapes
classification split (LeNet-5 and AlexNet also on the digits), two seeds; GoogLeNet with and
without its auxiliary classifiers, VGG with and without batch norm, AlexNet with and without
dropout.

Equal wall time: each network's training step is timed first (median of a few steps on one
batch), and its run then gets ``budget / step`` iterations of the shared classification recipe
(AdamW, cosine schedule, the same augmentation, batch and input size), so that a slow network
is compared at the time a fast one had, not at its own convergence. The time axis is training
time; each run's evaluation and start-up come on top.

Writes the table and an accuracy-against-time plot (``benchmarks/results/architectures.png``)
into BENCHMARKS.md.
"""
from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._report import ROOT, base_parser, finish, markdown_table, median_time, run_train  # noqa: E402

SHAPES = os.path.join(ROOT, "configs", "classify_resnet18_shapes.yaml")
DIGITS = os.path.join(ROOT, "configs", "classify_lenet5_digits.yaml")
# (row name, backbone, extra overrides)
VARIANTS = [
    ("LeNet-5", "lenet5", []),
    ("AlexNet", "alexnet", []),
    ("AlexNet, no dropout", "alexnet", ["model.heads.cls.dropout=0"]),
    ("VGG-11", "vgg11", []),
    ("VGG-11-BN", "vgg11_bn", []),
    ("VGG-16", "vgg16", []),
    ("VGG-16-BN", "vgg16_bn", []),
    ("GoogLeNet", "googlenet", []),
    ("GoogLeNet + aux", "googlenet", ["model.backbone.out_features=[c4a, c4d, c5]",
                                      "model.heads.cls.aux_features=[c4a, c4d]"]),
    ("ResNet-18", "resnet18", []),
    ("ResNet-34", "resnet34", []),
    ("ResNet-50", "resnet50", []),
    ("ResNet-101", "resnet101", []),
    ("ResNet-152", "resnet152", []),
    ("DenseNet-121", "densenet121", []),
]
DIGIT_ROWS = ("LeNet-5", "AlexNet")


def overrides_for(backbone: str, extra: list[str], size: int, batch: int) -> list[str]:
    return [f"model.backbone.name={backbone}", f"data.classify.size={size}", f"data.batch_size={batch}",
            *extra]


def measure(config: str, overrides: list[str], size: int, batch: int, repeats: int) -> dict:
    """Parameters, forward GFLOPs of one image, train step seconds and test images per second."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from detseg.config import load_config
    from detseg.modeling.model import build_model
    from detseg.structures import Batch
    cfg = load_config(config, overrides)
    model = build_model(cfg, 4).to(memory_format=torch.channels_last)
    params = sum(p.numel() for p in model.parameters())
    one = Batch(images=torch.randint(0, 256, (1, 3, size, size), dtype=torch.uint8))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.eval()(one)
    flops = counter.get_total_flops()
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
    batch_in = Batch(images=images, labels=torch.randint(0, 4, (batch,)))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        loss = model(batch_in)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.train()
    train = median_time(step, repeats, warmup=1)
    model.eval()
    with torch.no_grad():
        test = median_time(lambda: model(Batch(images=images)), repeats, warmup=1)
    return {"params_M": params / 1e6, "gflops": flops / 1e9, "train_step_s": train,
            "train_img_s": batch / train, "test_img_s": batch / test}


def train_for(config: str, overrides: list[str], iters: int, seed: int, cache: str, keep: str) -> dict:
    """One run of ``iters`` iterations; its final top-1 and wall time."""
    ov = [*overrides, f"solver.max_iter={iters}", f"solver.eval_period={max(1, iters // 4)}",
          f"solver.checkpoint_period={iters}", f"solver.warmup_iters={min(50, iters // 5)}",
          f"runtime.seed={seed}", f"data.shapes.cache_dir={cache}"]
    records, wall = run_train(config, ov, keep)
    evals = [r for r in records if "top1" in r]
    # (training seconds, top-1) at each of the four evaluations: the accuracy-against-time curve
    # (the trainer logs its clock every log_period iterations: the evaluations' iterations are
    # placed on it at the run's mean seconds per iteration)
    logged = [r for r in records if "time" in r]
    per_iter = logged[-1]["time"] / logged[-1]["iter"] if logged else 0.0
    curve = [(r["iter"] * per_iter, r["top1"]) for r in evals]
    return {"top1": evals[-1]["top1"], "wall_s": wall, "iters": iters, "curve": curve}


def export_check(run_dir: str) -> str:
    """tools/export.py on the run's best.pth (ONNX, with its parity check against the eager
    model): "yes", or the first line of what went wrong."""
    import subprocess
    onnx = os.path.join(run_dir, "model.onnx")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "export.py"), "--weights",
                        os.path.join(run_dir, "best.pth"), "--output", onnx, "--overwrite"],
                       cwd=ROOT, capture_output=True, text=True)
    for path in (onnx, onnx + ".data"):
        if os.path.exists(path):
            os.remove(path)
    return "yes" if r.returncode == 0 else (r.stderr.strip().splitlines() or ["failed"])[-1][:80]


def drop_runs(tmp: str, key: str, seeds: list[int]) -> None:
    """Delete a variant's run folders once measured: a VGG-16 run keeps two 1.6 GB checkpoints,
    and thirty runs left behind filled the disk."""
    for seed in seeds:
        shutil.rmtree(os.path.join(tmp, f"{key}-{seed}"), ignore_errors=True)


def plot(rows: list[dict], path: str) -> None:
    """Top-1 against training seconds, one curve per variant (seed 0's four evaluations)."""
    from detseg.visualize import _panel, write_png
    series = {r["name"]: [tuple(p) for p in r["shapes_curve"]] for r in rows if r.get("shapes_curve")}
    write_png(path, _panel(series, "shapes top-1 (y) against training seconds (x), seed 0"))


def main(argv=None) -> int:
    p = base_parser(__doc__)
    p.add_argument("--budget", type=float, default=45.0, help="training seconds per run")
    p.add_argument("--size", type=int, default=64, help="input size on shapes")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--only", nargs="+", help="row names to run (default: all)")
    args = p.parse_args(argv)
    variants = VARIANTS
    small = []
    if args.quick:
        # one row is enough to run the script's every step (the classification benchmark's quick
        # run trains the ResNet-18 recipe); two made this the suite's second-longest test
        variants = [v for v in VARIANTS if v[0] == "LeNet-5"]
        args.budget, args.seeds, repeats = 4.0, [0], 2
        small = ["data.shapes.num_train=200", "data.shapes.num_val=40"]
    else:
        repeats = 5
    if args.only:
        variants = [v for v in variants if v[0] in args.only]
    tmp = tempfile.mkdtemp(prefix="detseg-arch-")
    cache = os.path.join(tmp, "cache")
    rows = []
    for name, backbone, extra in variants:
        ov = overrides_for(backbone, extra, args.size, args.batch) + small
        row = {"name": name, **measure(SHAPES, ov, args.size, args.batch, repeats), "budget_s": args.budget}
        iters = max(10, int(args.budget / row["train_step_s"]))
        key = name.replace(" ", "").replace(",", "").replace("+", "p")
        runs = [train_for(SHAPES, ov, iters, s, cache, os.path.join(tmp, f"{key}-{s}")) for s in args.seeds]
        row["onnx"] = export_check(os.path.join(tmp, f"{key}-{args.seeds[0]}"))
        drop_runs(tmp, key, args.seeds)
        row.update(iters=iters, shapes_runs=[r["top1"] for r in runs], shapes_curve=runs[0]["curve"],
                   shapes_top1=statistics.mean(r["top1"] for r in runs),
                   run_wall_s=statistics.mean(r["wall_s"] for r in runs))
        if name in DIGIT_ROWS and not args.quick:
            size = 32 if backbone == "lenet5" else 64  # AlexNet's pooling needs 63 px or more
            dov = [f"model.backbone.name={backbone}", f"data.classify.size={size}", *extra]
            step = measure(DIGITS, dov, size, 64, repeats)["train_step_s"]
            d_iters = max(10, int(args.budget / step))
            digits = [train_for(DIGITS, dov, d_iters, s, cache, os.path.join(tmp, f"d-{key}-{s}"))
                      for s in args.seeds]
            row.update(digits_runs=[r["top1"] for r in digits], digits_iters=d_iters)
            drop_runs(tmp, f"d-{key}", args.seeds)
        rows.append(row)
        print(name, {k: v for k, v in row.items() if k != "name"}, flush=True)
    shutil.rmtree(tmp, ignore_errors=True)
    table = markdown_table(
        ["network", "params (M)", "GFLOPs / image", "train img/s", "test img/s", "iterations",
         "shapes top-1 (seeds)", "digits top-1 (seeds)", "ONNX export, parity"],
        [[r["name"], f"{r['params_M']:.2f}", f"{r['gflops']:.3f}", f"{r['train_img_s']:.0f}",
          f"{r['test_img_s']:.0f}", r["iters"], " / ".join(f"{v:.3f}" for v in r["shapes_runs"]),
          " / ".join(f"{v:.3f}" for v in r.get("digits_runs", [])) or "-", r["onnx"]] for r in rows])
    png = os.path.join(ROOT, "benchmarks", "results", "architectures.png")
    if not args.quick and not args.no_write:
        plot(rows, png)
    body = (f"Shapes classification ({args.size} px, batch {args.batch}) and digits (LeNet 32 px, AlexNet "
            f"64 px, batch 64), from scratch, {args.budget:g} s of training per run (iterations = budget / "
            f"the network's measured step), seeds {', '.join(map(str, args.seeds))}; GFLOPs of one "
            f"{args.size}-px image (forward, multiply-adds counted twice); images/s on batches of "
            f"{args.batch}.\n\n{table}\n\n![accuracy against time](benchmarks/results/architectures.png)\n")
    finish(args, "architectures", "The classic architectures side by side (classification)", body,
           {"rows": rows, "budget_s": args.budget})
    return 0


if __name__ == "__main__":
    sys.exit(main())
