"""The classification recipes, two seeds each, beside torchvision's own network trained the same
way: ``configs/classify_resnet18_shapes.yaml`` (ResNet-18 from scratch on the shapes split) and
``configs/classify_lenet5_digits.yaml`` (LeNet-5 on scikit-learn's digits).

Each recipe runs through ``tools/train.py`` as a user runs it (wall time includes start-up and
evaluation; the data is generated first, outside the timing). The peer: torchvision's
``resnet18(num_classes=K)`` trained on the very same batches (detseg's loader, same seed), with
the same optimizer, schedule, clipping and normalisation, for the same iterations, and scored on
the same val images. torchvision has no LeNet, so the LeNet row has no peer.
"""
from __future__ import annotations

import math
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._report import ROOT, base_parser, finish, markdown_table, run_train  # noqa: E402

RECIPES = {"ResNet-18, shapes": ("configs/classify_resnet18_shapes.yaml", "resnet18"),
           "LeNet-5, digits": ("configs/classify_lenet5_digits.yaml", None)}


def torchvision_peer(config: str, overrides: list[str], arch: str) -> dict:
    """torchvision's ``arch`` trained on detseg's batches with the recipe's solver; its top-1."""
    import torch
    import torchvision

    from detseg.config import load_config
    from detseg.data.build import build_datasets, build_train_loader, build_val_loader, resolve_splits
    from detseg.engine.trainer import seed_everything
    cfg = load_config(config, overrides)
    seed_everything(cfg.runtime.seed, False)
    ds = build_datasets(cfg, resolve_splits(cfg))
    model = getattr(torchvision.models, arch)(num_classes=ds["train"].num_classes)
    model = model.to(memory_format=torch.channels_last)
    mean = torch.tensor(cfg.model.pixel_mean).view(1, 3, 1, 1) / 255
    std = torch.tensor(cfg.model.pixel_std).view(1, 3, 1, 1) / 255

    def prep(images):
        return ((images.float() / 255 - mean) / std).contiguous(memory_format=torch.channels_last)
    s = cfg.solver
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=s.weight_decay, fused=True)

    def factor(it: int) -> float:  # the trainer's linear warmup and cosine decay
        warm = s.warmup_factor + (1 - s.warmup_factor) * it / s.warmup_iters if it < s.warmup_iters else 1.0
        return warm * 0.5 * (1 + math.cos(math.pi * it / s.max_iter))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    t0 = time.perf_counter()
    model.train()
    for it, batch in enumerate(build_train_loader(cfg, ds["train"])):
        if it == s.max_iter:
            break
        loss = torch.nn.functional.cross_entropy(model(prep(batch.images)), batch.labels)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), s.clip_grad_norm)
        opt.step()
        sched.step()
    train_s = time.perf_counter() - t0
    model.eval()
    right = total = 0
    with torch.no_grad():
        for batch in build_val_loader(cfg, ds["val"]):
            right += int((model(prep(batch.images)).argmax(1) == batch.labels).sum())
            total += len(batch.labels)
    return {"top1": right / total, "train_s": train_s}


def main(argv=None) -> int:
    p = base_parser(__doc__)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = p.parse_args(argv)
    tmp = tempfile.mkdtemp(prefix="detseg-cls-")
    cache = os.path.join(tmp, "cache")
    quick = ["solver.max_iter=6", "solver.eval_period=6", "solver.checkpoint_period=6",
             "solver.warmup_iters=2", "data.shapes.num_train=64", "data.shapes.num_val=16"] if args.quick else []
    seeds = args.seeds[:1] if args.quick else args.seeds
    rows, figures = [], {}
    for name, (config, peer) in RECIPES.items():
        config = os.path.join(ROOT, config)
        base = [f"data.shapes.cache_dir={cache}", *quick]
        from detseg.config import load_config
        from detseg.data.build import resolve_splits
        resolve_splits(load_config(config, base))  # generate the data outside the timing
        runs = []
        for seed in seeds:
            ov = [*base, f"runtime.seed={seed}"]
            records, wall = run_train(config, ov, os.path.join(tmp, f"{name[:6]}-{seed}"))
            top1 = [r for r in records if "top1" in r][-1]["top1"]
            run = {"seed": seed, "top1": top1, "wall_s": wall}
            if peer:
                run["torchvision"] = torchvision_peer(config, ov, peer)
            runs.append(run)
            print(name, run, flush=True)
        figures[name] = runs
        peer_cell = " / ".join(f"{r['torchvision']['top1']:.3f}" for r in runs) if peer else "(none in torchvision)"
        rows.append([name, " / ".join(f"{r['top1']:.3f}" for r in runs),
                     f"{statistics.mean(r['top1'] for r in runs):.3f}", peer_cell,
                     " / ".join(f"{r['wall_s'] / 60:.1f}" for r in runs)])
    table = markdown_table(["recipe", "detseg top-1 (seeds " + ", ".join(map(str, seeds)) + ")", "mean",
                            "torchvision's network, same batches", "minutes a run (train.py, whole)"], rows)
    body = ("Val top-1 of the classification recipes as shipped (shapes: 400 val images; digits: 450 "
            "scans), each run timed whole through tools/train.py (start-up and evaluation included; "
            f"data generated beforehand).\n\n{table}\n")
    shutil.rmtree(tmp, ignore_errors=True)  # run folders and cache: hundreds of MB a run
    finish(args, "classification", "Classification recipes (LeNet-5 on digits, ResNet-18 on shapes)", body, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
