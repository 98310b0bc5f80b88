"""Host time per call with tiny inputs (one RoI on a 1x1x4x4 map), where the op's own work is
nothing and what is left is the cost of getting to the kernel: detseg's roi_pool, roi_align and
roi_spp_pool against torchvision's roi_pool / roi_align on the same input, one thread, inference
(no gradient) and with a gradient wanted (forward only), median of repeated blocks of calls.

roi_spp_pool has no torchvision counterpart: it is set beside torchvision's roi_pool with one
level of the same size.
"""
from __future__ import annotations

import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._report import base_parser, finish, markdown_table  # noqa: E402


def per_call_us(fn, calls: int, blocks: int) -> float:
    """Median over ``blocks`` of the mean microseconds per call of ``calls`` calls, after a warm-up."""
    for _ in range(max(10, calls // 10)):
        fn()
    times = []
    for _ in range(blocks):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(times)


def main(argv=None) -> int:
    p = base_parser(__doc__)
    p.add_argument("--calls", type=int, default=2000, help="calls per timed block")
    p.add_argument("--blocks", type=int, default=9, help="timed blocks (median)")
    args = p.parse_args(argv)
    if args.quick:
        args.calls, args.blocks = 200, 3

    import torch
    import torchvision

    from detseg import ops
    torch.set_num_threads(1)  # host work, not the kernels' threads
    rows, figures = [], {"backend": ops.backend("cpu"), "us": {}, "ratio": {}}
    for grad in (False, True):
        x = torch.randn(1, 1, 4, 4, requires_grad=grad)
        rois = torch.tensor([[0, 0.0, 0.0, 3.0, 3.0]])
        cases = {
            "roi_pool": (lambda: ops.roi_pool(x, rois, 2, 1.0),
                         lambda: torchvision.ops.roi_pool(x, rois, 2, 1.0)),
            "roi_align": (lambda: ops.roi_align(x, rois, 2, 1.0, 2, True),
                          lambda: torchvision.ops.roi_align(x, rois, 2, 1.0, 2, True)),
            "roi_spp_pool": (lambda: ops.roi_spp_pool(x, rois, (2,), 1.0),
                             lambda: torchvision.ops.roi_pool(x, rois, 2, 1.0)),
        }
        mode = "with gradient" if grad else "inference"
        for name, (ours, theirs) in cases.items():
            # interleaved, so that a slow spell of the machine falls on both sides
            a, b = [], []
            for _ in range(3):
                a.append(per_call_us(ours, args.calls, args.blocks))
                b.append(per_call_us(theirs, args.calls, args.blocks))
            us, tv = statistics.median(a), statistics.median(b)
            key = f"{name} ({mode})"
            figures["us"][key] = {"detseg": us, "torchvision": tv}
            figures["ratio"][key] = us / tv
            rows.append([name, mode, f"{tv:.1f}", f"{us:.1f}", f"{us / tv:.2f}x"])
    body = markdown_table(["op", "call", "torchvision us", "detseg us", "detseg / torchvision"], rows)
    body += ("\n\nOne RoI on a 1x1x4x4 map, one thread, microseconds per call (median of "
             f"{args.blocks} blocks of {args.calls} calls, three interleaved rounds per side). "
             "detseg's CPU calls build the bin or sample table in one C++ call and reach the kernel "
             "without the custom op's dispatch (compiled and exported graphs keep the custom ops); "
             "roi_spp_pool is set beside torchvision's roi_pool of one same-size level.")
    finish(args, "host_overhead", "Host time per call, tiny inputs (CPU)", body, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
