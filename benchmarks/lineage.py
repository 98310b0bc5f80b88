"""Per-image test time across the lineage, on one backbone, one ~600 px image, one proposal set.

- sliding window: naive (crop every window with its context margin, classify each crop alone)
  vs convolutional (one pass over the padded image, OverFeat);
- R-CNN (every proposal warped to 224 x 224 and run through the CNN) vs SPPNet (one CNN pass,
  (6, 3, 2, 1) pyramid of each proposal) vs Fast R-CNN (one pass, 7 x 7 RoI pooling).

All heads use the same coarsest feature map (ResNet-18 c5 by default), fc layers of the same
width, 80 classes, score threshold and class-wise NMS as configured by default; weights are
random (speed does not depend on them). The naive sliding window is too slow to run over every
window: it is timed on a sample of windows of every shape and extrapolated to the image's full
window count (per-window cost x count, shape by shape); the sample's scores are checked against
the convolutional ones.
"""
from __future__ import annotations

import glob
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._report import ROOT, base_parser, finish, markdown_table, median_time  # noqa: E402


def load_image(size: int):
    """A coco_tiny photo (or a shapes image when ../shared is absent) resized to ``size`` short side."""
    import cv2

    from detseg.data.io import read_image
    from detseg.data.shapes import render_image
    photos = sorted(glob.glob(os.path.join(ROOT, "..", "shared", "data", "coco_tiny", "val2017", "*.jpg")))
    if photos:
        image, source = read_image(photos[0]), os.path.relpath(photos[0], ROOT)
    else:
        image, source = render_image(0, "val", 0)[0], "shapes val image 0"
    h, w = image.shape[:2]
    s = size / min(h, w)
    return cv2.resize(image, (round(w * s), round(h * s)), interpolation=cv2.INTER_LINEAR), source


def proposals_for(image, count: int):
    """Selective search (fast) boxes, topped up with dense windows if it finds fewer than ``count``."""
    import torch

    from detseg.modeling.proposals.selective_search import selective_search
    from detseg.modeling.proposals.windows import dense_windows
    boxes = torch.as_tensor(selective_search(image, "fast", count))
    if len(boxes) < count:
        extra = dense_windows(image.shape[:2], [64, 128, 256], [0.5, 1.0, 2.0], 32)
        boxes = torch.cat([boxes, extra[torch.randperm(len(extra))[: count - len(boxes)]]])
    return boxes[:count].float()


def main(argv=None) -> int:
    p = base_parser(__doc__)
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--size", type=int, default=600, help="shortest image side")
    p.add_argument("--proposals", type=int, default=300)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--naive-sample", type=int, default=6, help="naive windows timed per window shape")
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.proposals, args.repeats, args.naive_sample = 256, 60, 1, 2

    import torch

    from detseg.data.transforms import collate
    from detseg.modeling.backbones import build_backbone, coarsest
    from detseg.modeling.heads import RCNNHead, RegionHead, SlidingWindowHead
    from detseg.modeling.poolers import RoIPoolConfig, SPPPoolerConfig, build_pooler
    from detseg.modeling.backbones import context_margin
    from detseg.modeling.model import Model
    from detseg.modeling.proposals import SelectiveSearchProposals

    torch.manual_seed(0)
    image, source = load_image(args.size)
    props = proposals_for(image, args.proposals)
    item = {"image": torch.from_numpy(image).permute(2, 0, 1).contiguous(), "image_id": 0,
            "orig_size": image.shape[:2], "proposals": props}
    batch = collate([item])
    backbone = build_backbone(args.backbone).eval()
    shapes = backbone.output_shape()
    top = coarsest(shapes)
    k = 80
    common = dict(num_classes=k, fc_dims=(1024, 1024))
    source_ = SelectiveSearchProposals(max_per_image=args.proposals)
    heads = {
        "R-CNN": RCNNHead(in_shapes=shapes, proposals=source_, feature=top, warp_size=224,
                          context_pad=16, pool_size=6, crop_batch_size=50, **common),
        "SPPNet": RegionHead(proposals=source_, pooler=build_pooler(SPPPoolerConfig(), shapes, top),
                             **common),
        "Fast R-CNN": RegionHead(proposals=source_, pooler=build_pooler(RoIPoolConfig(output_size=7), shapes, top),
                                 **common),
    }
    sw_feature = next((n for n, s in shapes.items() if s.stride == 16), top)
    sliding = SlidingWindowHead(in_shapes=shapes, num_classes=k, feature=sw_feature,
                                margin=context_margin(backbone, sw_feature, shapes[sw_feature].stride),
                                window_sizes=(64, 128, 256), aspect_ratios=(0.5, 1.0, 2.0))
    times = {}
    with torch.no_grad():
        for name, head in heads.items():
            model = Model(backbone, {"h": head}).eval()
            times[name] = median_time(lambda: model(batch), args.repeats)
            print(f"{name}: {times[name] * 1000:.0f} ms", flush=True)
        model = Model(backbone, {"h": sliding}).eval()
        times["sliding, convolutional"] = median_time(lambda: model(batch), args.repeats)
        print(f"sliding conv: {times['sliding, convolutional'] * 1000:.0f} ms", flush=True)
        naive_total, n_windows, max_diff = naive_estimate(sliding, model, batch, backbone, args.naive_sample)
        times["sliding, naive (extrapolated)"] = naive_total
    naive, conv = times["sliding, naive (extrapolated)"], times["sliding, convolutional"]
    speed = {"spp_vs_rcnn": times["R-CNN"] / times["SPPNet"],
             "fast_rcnn_vs_rcnn": times["R-CNN"] / times["Fast R-CNN"],
             "conv_vs_naive_sliding": naive / conv}
    rows = [[name, f"{t * 1000:,.0f}"] for name, t in times.items()]
    body = (f"Image: {source}, resized to {tuple(batch['image_sizes'][0])}; {len(props)} proposals "
            f"(selective search, fast); backbone {args.backbone} (random weights), region heads on "
            f"{top}, sliding windows on {sw_feature} ({n_windows} windows, 3 sizes x 3 ratios); "
            f"median of {args.repeats} runs after one warm-up.\n\n")
    body += markdown_table(["method", "ms per image"], rows)
    body += "\n\n" + markdown_table(["speed-up", "ratio"], [
        ["SPPNet vs R-CNN", f"{speed['spp_vs_rcnn']:.1f}x"],
        ["Fast R-CNN vs R-CNN", f"{speed['fast_rcnn_vs_rcnn']:.1f}x"],
        ["convolutional vs naive sliding window", f"{speed['conv_vs_naive_sliding']:.0f}x"]])
    body += (f"\n\nNaive sliding window: timed on {args.naive_sample} windows of each shape and "
             f"extrapolated to all {n_windows}; on those windows its outputs differ from the "
             f"convolutional ones by at most {max_diff:.1e}.")
    finish(args, "lineage", "The lineage: per-image test time", body,
           {"ms": {k_: v * 1000 for k_, v in times.items()}, "speedup": speed,
            "naive_max_abs_diff": max_diff, "windows": n_windows, "proposals": len(props)})
    return 0


def naive_estimate(head, model, batch, backbone, per_shape: int) -> tuple[float, int, float]:
    """Extrapolated naive time for all windows, the window count, and the sampled max |diff|."""
    import torch
    pixels = model.preprocess(batch["images"])
    b = batch.replace(pixels=pixels)
    padded = head.padded_pixels(pixels, b["image_sizes"])[0]
    _, conv_out = head.score_windows(b, backbone)[0]
    total, count, diffs, start = 0.0, 0, [], 0
    for j, shape in enumerate(head.shapes):
        boxes = head.windows(b["image_sizes"][0], shape)[2]
        n = len(boxes)
        if n == 0:
            continue
        per_window = []
        for w in torch.linspace(0, n - 1, min(per_shape, n)).long().tolist():
            t0 = time.perf_counter()
            out = head.naive_scores(padded, boxes[w:w + 1], j, backbone)
            per_window.append(time.perf_counter() - t0)
            diffs.append(float((out[0] - conv_out[start + w]).abs().max()))
        total += statistics.median(per_window) * n
        count += n
        start += n
    return total, count, max(diffs)


if __name__ == "__main__":
    sys.exit(main())
