"""How big and how fast a model is: parameters per part, FLOPs at an input size, and measured
images per second for inference and for a training step on this device."""
from __future__ import annotations

import statistics
import time
from typing import Callable, Optional

import torch
from torch import nn

from ..structures import Batch


def parameter_counts(model: nn.Module) -> dict[str, dict[str, int]]:
    """``{part: {"total", "trainable"}}`` for the backbone (and its FPN) and each head (and its
    proposal network and mask branch), plus ``"model"``."""
    parts = {"model": model}
    backbone = model.backbone
    if isinstance(getattr(backbone, "fpn", None), nn.Module):
        parts.update({"backbone": backbone.body, "fpn": backbone.fpn})
    else:
        parts["backbone"] = backbone
    for name, head in model.heads.items():
        parts[f"heads.{name}"] = head
        for child in ("proposals", "mask_head"):
            sub = getattr(head, child, None)
            if isinstance(sub, nn.Module) and any(True for _ in sub.parameters()):
                parts[f"heads.{name}.{child}"] = sub
    return {name: {"total": sum(p.numel() for p in m.parameters()),
                   "trainable": sum(p.numel() for p in m.parameters() if p.requires_grad)}
            for name, m in parts.items()}


def synthetic_batch(height: int, width: int, batch_size: int = 1, seed: int = 0) -> dict:
    """Random uint8 images of one size as a collated batch (no targets): for FLOPs and timing."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch_size, 3, height, width), dtype=torch.uint8, generator=g)
    return {"images": images, "image_sizes": [(height, width)] * batch_size,
            "orig_sizes": [(height, width)] * batch_size, "image_ids": list(range(batch_size))}


def count_flops(model: nn.Module, batch: dict) -> dict[str, int]:
    """FLOPs of one inference forward (``torch.utils.flop_counter``: a multiply-add is 2 FLOPs),
    ``{"total": n, <module path>: n, ...}`` for every module that does any."""
    from torch.utils.flop_counter import FlopCounterMode
    model.eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(batch)
    per_module = {name.removeprefix("Model.").removeprefix("Model"): sum(ops.values())
                  for name, ops in counter.get_flop_counts().items()}
    per_module.pop("Global", None)
    per_module.pop("", None)
    return {"total": counter.get_total_flops(), **per_module}


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeats`` runs after ``warmup`` runs (the
    GPU's queued work waited for after each, when there is one)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def images_per_second(model: nn.Module, batch: dict, repeats: int = 3) -> float:
    """Inference throughput: images of ``batch`` over the median forward time."""
    model.eval()

    def run():
        with torch.no_grad():
            model(batch)
    return len(Batch.of(batch).images) / median_seconds(run, repeats)


def train_images_per_second(model: nn.Module, batch, repeats: int = 3, lr: float = 1e-4) -> float:
    """Training throughput: forward, backward and an SGD step on ``batch`` (with targets), on a
    copy of the weights so that ``model`` itself is left as it was."""
    import copy
    trained = copy.deepcopy(model).train()
    opt = torch.optim.SGD([p for p in trained.parameters() if p.requires_grad], lr=lr)

    def step():
        loss = trained(batch)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return len(Batch.of(batch).images) / median_seconds(step, repeats)


def summarize(model: nn.Module, size: tuple[int, int], train_batch=None, repeats: int = 3,
              timing: bool = True) -> dict:
    """Everything above in one dict (``train_images_per_s`` None without ``train_batch``)."""
    batch = synthetic_batch(*size)
    out = {"input_size": list(size), "parameters": parameter_counts(model),
           "flops": count_flops(model, batch)}
    if timing:
        out["images_per_s"] = images_per_second(model, batch, repeats)
        out["train_images_per_s"] = (train_images_per_second(model, train_batch, repeats)
                                     if train_batch is not None else None)
    return out


def format_summary(s: dict, top: Optional[int] = 8) -> str:
    """A readable table of ``summarize``'s output."""
    lines = [f"{'part':<28} {'parameters':>12} {'trainable':>12}"]
    for name, c in s["parameters"].items():
        lines.append(f"{name:<28} {c['total']:>12,} {c['trainable']:>12,}")
    flops = s["flops"]
    h, w = s["input_size"]
    lines.append(f"\nFLOPs at {h}x{w}: {flops['total'] / 1e9:.2f} G (inference forward, one image)")
    heavy = sorted(((k, v) for k, v in flops.items() if k != "total" and k.count(".") <= 2),
                   key=lambda kv: -kv[1])[:top]
    for k, v in heavy:
        lines.append(f"  {k:<40} {v / 1e9:8.2f} G")
    if "images_per_s" in s:
        lines.append(f"\ninference: {s['images_per_s']:.2f} images/s")
        t = s.get("train_images_per_s")
        lines.append(f"training step: {t:.2f} images/s" if t else "training step: n/a (no training data)")
    return "\n".join(lines)
