"""RoIAlign speed: detseg vs torchvision.ops.roi_align, same inputs, one run (CPU, or both on a
GPU with --device cuda: detseg's Triton kernels vs torchvision's CUDA kernels).

(box)  512 RoIs on 1x256x50x68, 7x7, scale 1/16 (a C4 / single-map box head)
(fpn)  1024 RoIs on 8x128x36x36, 7x7, scale 1/8 (the shapes Faster R-CNN recipe's box head)
(mask) 512 RoIs on 1x256x100x136, 14x14, scale 1/8 (a mask head)

sampling_ratio 2, aligned False (torchvision's detectors). Boxes 16-300 px. Forward and
forward+backward; outputs and gradients are checked equal to torchvision's before timing.
torchvision's CPU kernel runs on one thread; detseg's uses torch's intra-op threads, so detseg is
also timed on one thread to show what the kernel itself gains.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torchvision  # noqa: E402

from benchmarks._report import (add_device_arg, base_parser, device_label, device_time,  # noqa: E402
                                finish, markdown_table)
from detseg.ops import backend, roi_align, set_cuda_kernels  # noqa: E402

set_cuda_kernels("detseg")  # on CUDA too: the point is detseg's kernels against torchvision's


def make_case(k: int, n: int, c: int, h: int, w: int, stride: int, seed: int = 0, device: str = "cpu"):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g)
    size = torch.tensor([w * stride, h * stride])
    wh = torch.rand(k, 2, generator=g) * 284 + 16
    wh = torch.minimum(wh, size.float())
    xy = torch.rand(k, 2, generator=g) * (size - wh)
    batch = torch.randint(0, n, (k, 1), generator=g).float()
    return x.to(device), torch.cat([batch, xy, xy + wh], 1).to(device)


CASES = {  # name: (RoIs, N, C, H, W, stride, output size)
    "box": (512, 1, 256, 50, 68, 16, 7),
    "fpn": (1024, 8, 128, 36, 36, 8, 7),
    "mask": (512, 1, 256, 100, 136, 8, 14),
}


def main(argv=None) -> int:
    p = base_parser(__doc__)
    p.add_argument("--repeats", type=int, default=11)
    add_device_arg(p)
    args = p.parse_args(argv)
    dev = args.device
    cpu = torch.device(dev).type == "cpu"
    repeats, warmup = (2, 1) if args.quick else (args.repeats, 2)
    threads = torch.get_num_threads()
    rows, figures = [], {"backend": backend(dev), "device": dev, "threads": threads, "speedup": {},
                         "speedup_one_thread": {}, "ms": {}}
    for name, (k, n, c, h, w, stride, size) in CASES.items():
        if args.quick:  # a quarter of the RoIs keeps the smoke run short
            k = k // 4
        x, rois = make_case(k, n, c, h, w, stride, device=dev)
        ours = lambda t, r=rois, s=size, st=stride: roi_align(t, r, s, 1 / st, 2)  # noqa: E731
        theirs = lambda t, r=rois, s=size, st=stride: (  # noqa: E731
            torchvision.ops.roi_align(t, r, s, 1 / st, 2))

        def fwd_bwd(fn, inp=x, r=None):
            def run():
                xx = inp.detach().requires_grad_(True)
                out = fn(xx) if r is None else fn(xx, r)
                out.backward(torch.ones_like(out))
                return xx.grad
            return run

        # On the CPU: bit-equal to torchvision. On a GPU the check is against torchvision's CPU
        # result, not its CUDA one: torchvision's CUDA kernel fuses its sample positions into FMAs
        # and differs from its own CPU result by up to ~2e-5 on these cases (seen on an H200),
        # while detseg's Triton kernel reads the same sample table as its CPU kernel.
        with torch.no_grad():
            ref = theirs(x.cpu(), rois.cpu())
            assert torch.allclose(ours(x).cpu(), ref, rtol=0, atol=0 if cpu else 1e-5), \
                f"{name}: forward differs from torchvision"
        ref_grad = fwd_bwd(theirs, x.cpu(), rois.cpu())()
        assert torch.allclose(fwd_bwd(ours)().cpu(), ref_grad, rtol=0, atol=1e-4), \
            f"{name}: gradients differ"
        timed = {}
        passes = (("forward", lambda fn: (lambda: fn(x.detach()))), ("forward+backward", fwd_bwd))
        for pass_name, make in passes:
            with torch.set_grad_enabled(pass_name != "forward"):
                timed[("tv", pass_name)] = device_time(dev, make(theirs), repeats, warmup)
                timed[("ours", pass_name)] = device_time(dev, make(ours), repeats, warmup)
                torch.set_num_threads(1)
                try:  # on a GPU the thread count changes nothing: the column then repeats
                    timed[("ours1", pass_name)] = device_time(dev, make(ours), repeats, warmup)
                finally:
                    torch.set_num_threads(threads)
            tv_ms, ours_ms, one_ms = (timed[(who, pass_name)] * 1e3 for who in ("tv", "ours", "ours1"))
            rows.append([f"({name}) {k} RoIs, {n}x{c}x{h}x{w}, {size}x{size}, 1/{stride}", pass_name,
                         f"{tv_ms:.1f}", f"{ours_ms:.1f}", f"**{tv_ms / ours_ms:.1f}x**", f"{one_ms:.1f}",
                         f"{tv_ms / one_ms:.1f}x"])
            figures["speedup"].setdefault(name, {})[pass_name] = tv_ms / ours_ms
            figures["speedup_one_thread"].setdefault(name, {})[pass_name] = tv_ms / one_ms
            figures["ms"].setdefault(name, {})[pass_name] = {"torchvision": tv_ms, "detseg": ours_ms,
                                                             "detseg_one_thread": one_ms}
    body = markdown_table(["case", "pass", "torchvision ms", f"detseg ms ({threads} threads)", "speed-up",
                           "detseg ms (1 thread)", "speed-up, 1 thread"], rows)
    body += (f"\n\nMedians of {repeats} runs after {warmup} warm-ups; detseg backend `{figures['backend']}`. "
             + ("Forward outputs are bit-identical to torchvision's" if cpu else
                "Forward outputs equal torchvision's CPU result within 1e-5 (its CUDA kernel differs "
                "from its own CPU one by up to ~2e-5)")
             + " and gradients within 1e-4 (checked before timing).")
    label = device_label(dev)
    finish(args, "roi_align" + ("_cuda" if label else ""),
           f"RoIAlign{label or ' (CPU)'}: detseg vs torchvision", body, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
