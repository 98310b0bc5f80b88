"""Training-step time of classifiers at small inputs, with and without the trimmed convolutions
(``detseg.modeling.trimmed_conv``: the training forward leaves out the kernel taps that read only
zero padding, as on ResNet's 1x1 layer4 maps at 32 px).

Each architecture is built once (detseg's backbone and classify head, channels-last) and timed
through the trainer's step (forward, cross-entropy, backward, gradient clipping, fused AdamW) on
the same random batch, float32, two ways that share the weights: "plain" with every
``TrimmedConv2d`` switched back to ``nn.Conv2d`` (what torchvision's network computes), and
"trimmed" (detseg's default). The two alternate in rounds, so that a slow spell of the machine
falls on both; medians of the steps. Each CPU kind runs in a child process of its own: ``avx2``
limits oneDNN and ATen to AVX2 on this CPU (``ONEDNN_MAX_CPU_ISA``, ``ATEN_CPU_CAPABILITY``),
which is how an AVX2-only machine runs the same code (those variables are read when torch loads).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._report import ROOT, base_parser, finish, markdown_table  # noqa: E402

ISAS = {"native": {}, "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}}
ARCHS = ["resnet18", "densenet121", "googlenet"]


def step_times(arch: str, size: int, batch: int, steps: int, rounds: int) -> dict:
    """{"plain": s, "trimmed": s}: median training-step seconds of ``arch`` at ``size`` px."""
    import torch
    from torch import nn

    from detseg.config import load_config
    from detseg.engine.trainer import build_optimizer
    from detseg.modeling.model import build_model
    from detseg.modeling.trimmed_conv import TrimmedConv2d
    from detseg.structures import Batch
    torch.manual_seed(0)
    cfg = load_config(os.path.join(ROOT, "configs", "classify_resnet18_shapes.yaml"),
                      [f"model.backbone.name={arch}", f"data.classify.size={size}"])
    model = build_model(cfg, 4).to(memory_format=torch.channels_last).train()
    trimmed = [m for m in model.modules() if isinstance(m, TrimmedConv2d)]
    opt = build_optimizer(model, cfg.solver)
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
    labels = torch.randint(0, 4, (batch,))

    def step():
        data = Batch(images=images, image_sizes=[(size, size)] * batch, orig_sizes=[(size, size)] * batch,
                     image_ids=list(range(batch)), labels=labels)  # fresh: Model adds its pixels
        loss = model(data)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.solver.clip_grad_norm)
        opt.step()

    times = {"plain": [], "trimmed": []}
    sides = [("plain", nn.Conv2d), ("trimmed", TrimmedConv2d)]
    for r in range(rounds):
        for kind, cls in (sides if r % 2 == 0 else sides[::-1]):  # ABBA: neither side always first
            for m in trimmed:
                m.__class__ = cls
            for _ in range(2):  # warm-up: oneDNN's primitives for these shapes
                step()
            for _ in range(steps):
                t = time.perf_counter()
                step()
                times[kind].append(time.perf_counter() - t)
    return {**{k: statistics.median(v) for k, v in times.items()}, "trimmed_convs": len(trimmed)}


def child(args) -> int:
    out = {arch: step_times(arch, args.size, args.batch, args.steps, args.rounds) for arch in args.archs}
    print("RESULT " + json.dumps(out), flush=True)
    return 0


def main(argv=None) -> int:
    p = base_parser(__doc__)
    p.add_argument("--archs", nargs="+", default=ARCHS)
    p.add_argument("--isas", nargs="+", choices=list(ISAS), default=list(ISAS))
    p.add_argument("--size", type=int, default=32, help="image side in pixels")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=10, help="timed steps per round and side")
    p.add_argument("--rounds", type=int, default=4, help="alternating rounds (ABBA order)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.archs, args.steps, args.rounds, args.batch = ["resnet18"], 2, 1, 16
    if args.child:
        return child(args)
    figures, rows = {}, []
    for isa in args.isas:
        cmd = [sys.executable, os.path.abspath(__file__), "--child", "--archs", *args.archs,
               "--size", str(args.size), "--batch", str(args.batch), "--steps", str(args.steps),
               "--rounds", str(args.rounds)]
        run = subprocess.run(cmd, env={**os.environ, **ISAS[isa]}, capture_output=True, text=True)
        result = next((line[7:] for line in run.stdout.splitlines() if line.startswith("RESULT ")), None)
        if run.returncode != 0 or result is None:
            print(f"error: the {isa} run failed: {run.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
            return 1
        figures[isa] = json.loads(result)
        for arch, t in figures[isa].items():
            rows.append([arch, isa, t["trimmed_convs"], f"{t['plain'] * 1e3:.0f}", f"{t['trimmed'] * 1e3:.0f}",
                         f"{t['plain'] / t['trimmed']:.2f}x"])
    body = markdown_table(["network", "CPU kind", "convolutions trimmed", "plain ms a step", "trimmed ms a step",
                           "speed-up"], rows)
    body += (f"\n\nTraining steps of {args.batch} images of {args.size} x {args.size} px, float32, "
             "channels-last, detseg's backbone + classify head with fused AdamW; median of "
             f"{args.steps} steps x {args.rounds} rounds per side in ABBA order, the same weights and "
             "batch; a network with no convolution trimmed shows the measurement's own spread. plain: every convolution as nn.Conv2d; trimmed: the taps that read only "
             "padding left out in training (the same sums without their zero terms), in convolutions of at least 2^18 weights (DenseNet-121 has none). avx2: oneDNN "
             "and ATen limited to AVX2 on this CPU, in a process of its own.")
    finish(args, "trimmed_conv", "Trimmed convolutions: training steps at small inputs", body, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
