"""Pasting 100 28x28 masks into an 800x1200 image: detseg's batched paste vs torchvision's
``paste_masks_in_image`` (a Python loop per mask), same masks and boxes, thresholded at 0.5.

torchvision returns float masks; both timings include everything up to a boolean image per mask
(torchvision's output is thresholded inside its timed call).
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._report import base_parser, finish, markdown_table, median_time  # noqa: E402


def main(argv=None) -> int:
    p = base_parser(__doc__)
    p.add_argument("--masks", type=int, default=100)
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args(argv)
    if args.quick:
        args.repeats = 3

    import torch
    from torchvision.models.detection.roi_heads import paste_masks_in_image

    from detseg.ops.paste_masks import paste_masks

    h, w = 800, 1200
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(args.masks, 2, generator=g) * torch.tensor([w, h]) * 0.9
    wh = torch.rand(args.masks, 2, generator=g) * 250 + 10  # boxes 10-260 px a side
    boxes = torch.cat([xy, xy + wh], dim=1)
    masks = torch.rand(args.masks, 28, 28, generator=g)
    ours = median_time(lambda: paste_masks(masks, boxes, (h, w)), args.repeats)
    theirs = median_time(lambda: paste_masks_in_image(masks[:, None], boxes, (h, w)) >= 0.5, args.repeats)
    # Same masks as torchvision's (pixels within float rounding of 0.5 excepted).
    got = paste_masks(masks, boxes, (h, w))
    ref = paste_masks_in_image(masks[:, None], boxes, (h, w))[:, 0]
    unsure = (ref - 0.5).abs() < 1e-5
    mismatches = int(((got != (ref >= 0.5)) & ~unsure).sum())
    speedup = theirs / ours
    rows = [["detseg paste_masks (batched)", f"{ours * 1000:.1f}"],
            ["torchvision paste_masks_in_image", f"{theirs * 1000:.1f}"]]
    body = markdown_table(["method", "ms (median)"], rows)
    body += (f"\n\n{args.masks} masks, 800x1200 image, median of {args.repeats} runs after a warm-up: "
             f"**{speedup:.1f}x** faster, with the same geometry as torchvision (padded mask, enlarged "
             f"integer box, bilinear resize): {mismatches} pixels differ from torchvision's masks.")
    finish(args, "paste_masks", "Mask pasting", body,
           {"ms": {"detseg": ours * 1000, "torchvision": theirs * 1000},
            "speedup": {"paste_vs_torchvision": speedup}, "mismatches": mismatches})
    return 0


if __name__ == "__main__":
    sys.exit(main())
