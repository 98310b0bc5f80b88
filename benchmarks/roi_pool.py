"""RoI / SPP pooling speed: detseg vs torchvision.ops.roi_pool, same inputs, one run (CPU, or
both on a GPU with --device cuda: detseg's Triton kernels vs torchvision's CUDA kernels).

(a) 7x7, 512 RoIs on 1x256x50x68, boxes up to 300 px, scale 1/16 (forward; forward+backward)
(b) 7x7, 2000 RoIs on 1x512x64x64, boxes up to 500 px, scale 1/16
(c) SPP levels (6, 3, 2, 1): one detseg call vs four torchvision calls (Fast R-CNN mapping, so
    both give identical numbers, which is checked)
"""
from __future__ import annotations

import os
import resource
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torchvision  # noqa: E402

from benchmarks._report import (add_device_arg, base_parser, device_label, device_time,  # noqa: E402
                                finish, markdown_table)
from detseg.ops import backend, roi_pool, roi_spp_pool, set_cuda_kernels  # noqa: E402

set_cuda_kernels("detseg")  # on CUDA too: the point is detseg's kernels against torchvision's


def make_case(k: int, c: int, h: int, w: int, max_box: float, seed: int = 0, device: str = "cpu"):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, c, h, w, generator=g)
    img_w, img_h = w * 16, h * 16
    wh = torch.rand(k, 2, generator=g) * (max_box - 16) + 16
    xy = torch.rand(k, 2, generator=g) * (torch.tensor([img_w, img_h]) - wh)
    rois = torch.cat([torch.zeros(k, 1), xy, xy + wh], 1)
    return x.to(device), rois.to(device)


def page_faults(fn, runs: int = 5) -> float:
    """Minor page faults of one ``fn()`` call, the mean of ``runs`` calls after the timed ones:
    first touches of memory that is new to the process (fresh or given back to the OS)."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(runs):
        fn()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / runs


def fwd_bwd(fn, x):
    def run():
        xx = x.detach().requires_grad_(True)
        out = fn(xx)
        out.backward(torch.ones_like(out))
    return run


def main(argv=None) -> int:
    p = base_parser(__doc__)
    add_device_arg(p)
    args = p.parse_args(argv)
    dev = args.device
    repeats, warmup = (1, 1) if args.quick else (15, 3)
    if args.quick and backend(dev) == "reference":
        repeats = 1  # the pure-PyTorch fallback takes seconds per call
    tv = torchvision.ops.roi_pool
    cases = {
        "a": make_case(512, 256, 50, 68, 300, device=dev),
        "b": make_case(2000, 512, 64, 64, 500, seed=1, device=dev),
    }
    if args.quick:
        cases["b"] = make_case(250, 512, 64, 64, 500, seed=1, device=dev)
    rows, figures = [], {"backend": backend(dev), "device": dev}

    def compare(name, ours, theirs, x):
        with torch.no_grad():
            assert torch.equal(ours(x), theirs(x)), f"{name}: results differ"
        # Warm-up runs let the first touches of fresh output buffers (page faults) settle.
        t_ours = device_time(dev, lambda: ours(x), repeats, warmup)
        t_tv = device_time(dev, lambda: theirs(x), repeats, warmup)
        b_ours = device_time(dev, fwd_bwd(ours, x), repeats, warmup)
        b_tv = device_time(dev, fwd_bwd(theirs, x), repeats, warmup)
        # Where fresh host memory goes (CPU only: a GPU's buffers come from torch's caching
        # allocator): page faults per forward+backward, torchvision's then ours.
        faults = () if dev != "cpu" else (f"{page_faults(fwd_bwd(theirs, x)):.0f}",
                                          f"{page_faults(fwd_bwd(ours, x)):.0f}")
        for kind, o, t in (("forward", t_ours, t_tv), ("forward+backward", b_ours, b_tv)):
            row_faults = faults if kind == "forward+backward" else ("",) * len(faults)
            rows.append([name, kind, f"{t * 1e3:.1f}", f"{o * 1e3:.1f}", f"{t / o:.1f}x", *row_faults])
            figures[f"{name}.{kind}"] = {"torchvision_ms": t * 1e3, "detseg_ms": o * 1e3,
                                         "speedup": t / o}
            if kind == "forward+backward" and dev == "cpu":
                figures[f"{name}.{kind}"].update(torchvision_page_faults=float(faults[0]),
                                                 detseg_page_faults=float(faults[1]))

    for key in ("a", "b"):
        x, rois = cases[key]
        compare(f"({key}) 7x7, {len(rois)} RoIs, {'x'.join(map(str, x.shape))}",
                lambda t, r=rois: roi_pool(t, r, 7, 1 / 16), lambda t, r=rois: tv(t, r, 7, 1 / 16), x)
    x, rois = cases["a"]
    levels = (6, 3, 2, 1)
    compare("(c) SPP (6,3,2,1), 512 RoIs, one call vs 4",
            lambda t: roi_spp_pool(t, rois, levels, 1 / 16, mapping="fast_rcnn"),
            lambda t: torch.cat([tv(t, rois, lv, 1 / 16).flatten(1) for lv in levels], 1), x)

    fault_columns = ["page faults / call, torchvision", "page faults / call, detseg"] if dev == "cpu" else []
    body = markdown_table(["case", "pass", "torchvision ms", "detseg ms", "speed-up", *fault_columns], rows)
    body += (f"\n\nMedians of {repeats} runs after {warmup} warm-up(s); detseg backend: "
             f"`{figures['backend']}`; outputs checked identical before timing.")
    if fault_columns:
        body += (" Page faults: the mean minor faults of a forward+backward after the timed runs "
                 "(the gradient of ones the benchmark itself allocates each call counts on both sides).")
    label = device_label(dev)
    finish(args, "roi_pool" + ("_cuda" if label else ""), f"RoI / SPP pooling{label or ' (CPU)'}", body,
           figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
