"""Training-step time of the shapes detection recipes: RoIPool vs RoIAlign box heads, Faster vs
Mask R-CNN, and detseg's RoIAlign vs torchvision's inside the same step.

Each variant builds its recipe's model from the same seed and runs the same pre-loaded batches
(data loading excluded: it is the same for all) through the trainer's own step: autocast as
configured, forward, backward, gradient clipping, AdamW. The figure is the median step time after
warm-up steps. "torchvision RoIAlign" swaps torchvision.ops.roi_align into detseg's poolers, the
way the library pooled before it had its own kernel.
"""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import statistics  # noqa: E402

import torch  # noqa: E402

from benchmarks._report import base_parser, finish, markdown_table  # noqa: E402

FASTER = "configs/faster_rcnn_resnet18_shapes.yaml"
MASK = "configs/mask_rcnn_resnet18_fpn_shapes.yaml"
POOL = "model.heads.det.pooler={type: roi_pool, output_size: 7}"  # Fast R-CNN's RoI pooling
ALL_POSITIVES = "model.heads.det.mask.rois_per_image=null"  # the paper: every positive RoI
VARIANTS = [  # (name, config, overrides, use torchvision's roi_align); the recipes pool with RoIAlign
    ("Faster R-CNN, RoIPool box head", FASTER, [POOL], False),
    ("Faster R-CNN, RoIAlign box head (recipe)", FASTER, [], False),
    ("Faster R-CNN, RoIAlign box head (recipe), torchvision kernel", FASTER, [], True),
    ("Mask R-CNN, RoIPool box head", MASK, [POOL], False),
    ("Mask R-CNN, RoIPool box head, torchvision kernel", MASK, [POOL], True),
    ("Mask R-CNN, RoIAlign box head (recipe)", MASK, [], False),
    ("Mask R-CNN, RoIAlign box head (recipe), torchvision kernel", MASK, [], True),
    ("Mask R-CNN, RoIAlign box head, mask loss on every positive RoI", MASK, [ALL_POSITIVES], False),
]
FASTER_POOL, FASTER_RECIPE, FASTER_TV, MASK_POOL, MASK_POOL_TV, MASK_RECIPE, MASK_TV, MASK_ALL = \
    (v[0] for v in VARIANTS)


@contextlib.contextmanager
def torchvision_roi_align(enabled: bool):
    """Route detseg's RoIAlign call sites to torchvision's kernel while ``enabled``."""
    if not enabled:
        yield
        return
    import torchvision

    from detseg.modeling.heads import mask
    from detseg.ops import multiscale_roi_align
    saved = multiscale_roi_align.roi_align, mask.roi_align
    multiscale_roi_align.roi_align = mask.roi_align = torchvision.ops.roi_align
    try:
        yield
    finally:
        multiscale_roi_align.roi_align, mask.roi_align = saved


def load_batches(n: int) -> list:
    from detseg.config import load_config
    from detseg.data.build import build_dataset, build_train_loader, resolve_splits
    cfg = load_config(MASK, ["data.num_workers=0"])  # masks included; the box recipes ignore them
    torch.manual_seed(0)
    ds = build_dataset(cfg, resolve_splits(cfg)["train"], train=True, with_masks=True)
    it = iter(build_train_loader(cfg, ds, 0))
    return [next(it) for _ in range(n)], ds


def step_times(config: str, overrides: list[str], batches: list, ds, warmup: int,
               tv: bool, init: str | None = None) -> tuple[list[float], list[int], float]:
    """Seconds of each step after ``warmup``, the RoIs the mask head trained on in each of those
    steps (empty without one), and the mask tower's forward+backward seconds on their mean count.
    ``init``: a checkpoint to start from (what fits of it, as ``model.init_from`` loads it)."""
    from detseg.config import load_config
    from detseg.engine.trainer import Trainer
    from detseg.modeling.model import build_model
    cfg = load_config(config, ["data.num_workers=0", *overrides])
    torch.manual_seed(0)
    model = build_model(cfg, ds.num_classes)
    if init:
        from detseg.engine.init_from import init_from
        init_from(model, init, ds.class_names, backbone=cfg.model.backbone.name)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, model, lambda start: iter(()), None, tmp, {})
    mask_head = getattr(model.heads["det"], "mask_head", None)
    rois: list[int] = []
    if mask_head is not None:  # the positive RoIs of a step: what the mask head's cost grows with
        mask_head.convs.register_forward_pre_hook(lambda m, inp: rois.append(inp[0].shape[0]))
    times = []
    with torchvision_roi_align(tv):
        for i, batch in enumerate(batches):
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=trainer.amp_dtype, enabled=trainer.amp_dtype is not None):
                loss = trainer.train_model(batch)["loss"]
            trainer.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainer.model.parameters(), cfg.solver.clip_grad_norm or 1e9)
            trainer.optimizer.step()
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    rois = rois[warmup:]
    tower = mask_tower_seconds(mask_head, round(statistics.mean(rois))) if rois else 0.0
    return times, rois, tower


def mask_tower_seconds(mask_head, n: int, repeats: int = 5) -> float:
    """Median forward+backward seconds of ``mask_head``'s layers after its pooler (convs, deconv,
    predictor) on ``n`` pooled RoIs ``[n, C, 14, 14]`` (channels-last, as the trainer runs them),
    the gradient of the pooled input included, as in a training step."""
    c = mask_head.convs[0].in_channels
    r = mask_head.pooler_resolution
    x = torch.randn(n, c, r, r).contiguous(memory_format=torch.channels_last).requires_grad_()

    def run():
        out = mask_head.predictor(torch.relu(mask_head.deconv(mask_head.convs(x))))
        out.sum().backward()
        mask_head.zero_grad(set_to_none=True)
        x.grad = None

    run()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None) -> int:
    p = base_parser(__doc__)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--init-from", metavar="CKPT",
                   help="start every variant from this checkpoint (e.g. a trained shapes Faster R-CNN): "
                        "a trained RPN's proposals give the positive RoIs, and so the mask-head work, of "
                        "a step late in training; its table is a section of its own")
    p.add_argument("--init-note", help="what the --init-from checkpoint is, for the table's text")
    args = p.parse_args(argv)
    steps, warmup = (1, 0) if args.quick else (args.steps, args.warmup)
    batches, ds = load_batches(steps + warmup)
    figures, medians = {"seconds_per_step": {}, "steps": {}, "mask_rois_per_step": {},
                        "mask_tower_seconds": {}}, {}
    rois, tower = {}, {}
    # --quick: a smoke run of the loop on three of the variants (all eight took a minute)
    variants = [v for v in VARIANTS if v[0] in (FASTER_POOL, FASTER_RECIPE, MASK_RECIPE)] if args.quick else VARIANTS
    for name, config, overrides, tv in variants:
        times, rois[name], tower[name] = step_times(config, overrides, batches, ds, warmup, tv,
                                                    args.init_from)
        medians[name] = statistics.median(times)
        figures["seconds_per_step"][name] = medians[name]
        figures["steps"][name] = {"seconds": times, "mask_rois": rois[name]}
        if rois[name]:
            figures["mask_rois_per_step"][name] = statistics.mean(rois[name])
            figures["mask_tower_seconds"][name] = tower[name]
        print(f"{name}: {medians[name]:.3f} s/step", flush=True)
    base = medians[FASTER_POOL]
    if args.quick:
        figures["ratios"] = {"roi_align_vs_roi_pool_faster": medians[FASTER_RECIPE] / base,
                             "mask_vs_faster_roi_align": medians[MASK_RECIPE] / medians[FASTER_RECIPE]}
        body = markdown_table(["variant", "s per step"], [[n, f"{m:.3f}"] for n, m in medians.items()])
        finish(args, "step_time", "Training step time (quick run)", body, figures)
        return 0
    rows = [[name, " ".join(ov) or "-", f"{medians[name]:.3f}", f"{medians[name] / base:.2f}",
             f"{statistics.mean(rois[name]):.0f}" if rois[name] else "-",
             f"{tower[name]:.3f}" if rois[name] else "-"] for name, _, ov, _ in VARIANTS]
    ratios = {
        "roi_align_vs_roi_pool_faster": medians[FASTER_RECIPE] / base,
        "mask_vs_faster_roi_pool": medians[MASK_POOL] / base,
        "mask_vs_faster_roi_align": medians[MASK_RECIPE] / medians[FASTER_RECIPE],
        "mask_vs_faster_every_positive": medians[MASK_ALL] / medians[FASTER_RECIPE],
        "mask_vs_faster_roi_pool_torchvision_kernel": medians[MASK_POOL_TV] / base,
        "torchvision_kernel_vs_detseg_faster": medians[FASTER_TV] / medians[FASTER_RECIPE],
    }
    figures["ratios"] = ratios
    body = markdown_table(["variant", "overrides", "s per step (median)", "vs Faster R-CNN RoIPool",
                           "mask RoIs per step (mean)", "mask tower s (forward+backward)"], rows)
    extra = medians[MASK_RECIPE] - medians[FASTER_RECIPE]
    r = {k: f"{v:.2f}x" for k, v in ratios.items()}
    body += (f"\n\nMedian of {steps} training steps after {warmup} warm-up steps, the same pre-loaded "
             f"batches (8 images, data loading excluded) for every variant, torch threads "
             f"{torch.get_num_threads()}. RoIAlign box head (the recipes') / RoIPool box head: "
             f"**{r['roi_align_vs_roi_pool_faster']}**; Mask / Faster R-CNN step with the recipes' RoIAlign "
             f"box heads **{r['mask_vs_faster_roi_align']}** (the mask loss on every positive RoI instead "
             f"of the recipe's `rois_per_image`: {r['mask_vs_faster_every_positive']}), with RoIPool box "
             f"heads {r['mask_vs_faster_roi_pool']} (with torchvision's RoIAlign kernel in the mask "
             f"head: {r['mask_vs_faster_roi_pool_torchvision_kernel']}); torchvision's RoIAlign kernel in "
             f"the same Faster R-CNN step: {r['torchvision_kernel_vs_detseg_faster']} detseg's. "
             f"The recipe's Mask R-CNN step costs {extra:.3f} s more than its Faster R-CNN step; the "
             f"mask tower alone (the 3x3 convs, the deconvolution and the predictor, forward and "
             f"backward, on {statistics.mean(rois[MASK_RECIPE]):.0f} pooled RoIs, the mean of its "
             f"steps) takes {tower[MASK_RECIPE]:.3f} s of that. Its cost grows with the positive RoIs "
             f"it trains on: {min(rois[MASK_RECIPE])} to {max(rois[MASK_RECIPE])} a step with the "
             f"recipe's cap, {min(rois[MASK_ALL])} to {max(rois[MASK_ALL])} (mean "
             f"{statistics.mean(rois[MASK_ALL]):.0f}, tower {tower[MASK_ALL]:.3f} s) with every positive.")
    title = "Training step time: RoIPool vs RoIAlign, Faster vs Mask R-CNN (CPU)"
    if args.init_from:
        body = (f"Every variant starts from `{os.path.basename(args.init_from)}` (what fits of it): "
                f"{args.init_note or 'a trained checkpoint'}.\n\n" + body)
        finish(args, "step_time_trained", title + ", from a trained detector", body, figures)
    else:
        finish(args, "step_time", title, body, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
