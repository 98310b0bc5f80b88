"""Training quality side by side: detseg's Faster / Mask R-CNN shapes recipes against torchvision's
own ``FasterRCNN`` / ``MaskRCNN`` built from torchvision parts with the same settings.

Both sides train in one process each (``--jobs`` at a time), through detseg's ``Trainer``: the
same batches (the loader is seeded by ``runtime.seed``), the same augmentation and resize, AdamW,
warmup, cosine schedule, gradient clipping, and the same COCO evaluator (pycocotools) on the same
val split. What differs is only the model: detseg's recipe, or torchvision's detector with

- a ResNet-18 (trainable BatchNorm) + ``BackboneWithFPN`` returning c3-c5 at the recipe's FPN
  width, no extra pooled level (the recipe's RPN reads p3-p5),
- the recipe's anchors, RPN pre/post-NMS counts, sampling and thresholds,
- ``MultiScaleRoIAlign`` on p3 (7x7, sampling ratio 2), two fc layers, the recipe's RoI sampling
  and test-time filtering; for Mask R-CNN the recipe's mask tower on p3 (14x14 RoIAlign),
- its ``GeneralizedRCNNTransform`` normalising with detseg's mean / std and not resizing (the data
  pipeline already did, for both), and ``postprocess`` mapping boxes and pasting masks at each
  file's own size, as torchvision does for its users.

    python benchmarks/vs_torchvision_training.py                      # both detectors, seeds 0 and 1
    python benchmarks/vs_torchvision_training.py --models faster --seeds 0 --iters 200
    python benchmarks/vs_torchvision_training.py --device cuda --jobs 4  # AP only: jobs share the GPU

Seconds per iteration are the training loop's own time (the logged time at the last iteration,
before the final evaluation) over the iterations; with ``--jobs`` above 1 the runs share the
machine and the table says that their times are not comparable.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._report import ROOT, base_parser, finish, markdown_table  # noqa: E402

RECIPES = {"faster": "configs/faster_rcnn_resnet18_shapes.yaml",
           "mask": "configs/mask_rcnn_resnet18_fpn_shapes.yaml"}
IMPLS = ("detseg", "torchvision")
VAL_IMAGES = 200  # 60 let AP move by ~0.03 between seeds (issue 15)


# -- torchvision's detector from torchvision's parts, with a recipe's settings --------------------
def torchvision_detector(cfg, num_classes: int):
    """torchvision ``FasterRCNN`` (or ``MaskRCNN`` when the recipe has a mask branch) with the
    settings of detseg config ``cfg``'s ``det`` region head; ``num_classes`` without background."""
    import torchvision
    from torchvision.models.detection import FasterRCNN, MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
    from torchvision.models.detection.transform import GeneralizedRCNNTransform
    from torchvision.ops import MultiScaleRoIAlign
    from torchvision.ops.feature_pyramid_network import ExtraFPNBlock

    class NoExtraLevel(ExtraFPNBlock):
        """BackboneWithFPN adds a max-pooled level unless told otherwise; the recipe has none."""

        def forward(self, results, x, names):
            return results, names

    class DataPipelineSized(GeneralizedRCNNTransform):
        """Normalise and batch, but keep each image's size: detseg's data pipeline resized it
        (the same random short side for both models), so both see the same pixels."""

        def resize(self, image, target=None):
            return image, target

    b, head = cfg.model.backbone, cfg.model.heads["det"]
    p = head.proposals
    if b.name != "resnet18" or not b.fpn or b.norm != "bn" or head.feature != "p3":
        raise SystemExit(f"the torchvision peer is written for a ResNet-18 FPN with BN and a p3 box "
                         f"head; {b.name} fpn={b.fpn} norm={b.norm} feature={head.feature} given")
    levels = {"layer2": "p3", "layer3": "p4", "layer4": "p5"}
    backbone = BackboneWithFPN(torchvision.models.resnet18(weights=None), levels, [128, 256, 512],
                               b.fpn_channels, extra_blocks=NoExtraLevel())
    if p.rpn_features != ["p3", "p4", "p5"]:
        raise SystemExit(f"the torchvision peer's RPN reads p3-p5; the recipe's reads {p.rpn_features}")
    anchors = AnchorGenerator(tuple(tuple(s) for s in p.anchor_sizes),
                              (tuple(p.aspect_ratios),) * len(p.anchor_sizes))
    if head.pooler.type != "roi_align" or head.pooler.features or head.pooler.aligned:
        raise SystemExit(f"the torchvision peer pools with RoIAlign (not aligned) from p3; the recipe's "
                         f"pooler is {head.pooler}")
    res = head.pooler.output_size
    kwargs = dict(
        rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_train=p.pre_nms_top_n[0], rpn_pre_nms_top_n_test=p.pre_nms_top_n[1],
        rpn_post_nms_top_n_train=p.post_nms_top_n[0], rpn_post_nms_top_n_test=p.post_nms_top_n[1],
        rpn_nms_thresh=p.nms_thresh, rpn_fg_iou_thresh=p.fg_iou, rpn_bg_iou_thresh=p.bg_iou,
        rpn_batch_size_per_image=p.batch_size_per_image, rpn_positive_fraction=p.positive_fraction,
        box_roi_pool=MultiScaleRoIAlign(["p3"], res, sampling_ratio=head.pooler.sampling_ratio),
        box_head=TwoMLPHead(b.fpn_channels * res * res, head.fc_dims[-1]),
        box_predictor=FastRCNNPredictor(head.fc_dims[-1], num_classes + 1),
        box_score_thresh=head.score_thresh, box_nms_thresh=head.nms_thresh,
        box_detections_per_img=head.detections_per_image, box_fg_iou_thresh=head.fg_iou,
        box_bg_iou_thresh=head.bg_iou, box_batch_size_per_image=head.batch_size_per_image,
        box_positive_fraction=head.fg_fraction)
    if len(head.fc_dims) != 2 or head.fc_dims[0] != head.fc_dims[1]:
        raise SystemExit(f"TwoMLPHead is two equal fc layers; the recipe has {head.fc_dims}")
    if head.mask is not None:
        m = head.mask
        if m.feature != "p3" or m.multiscale_features:
            raise SystemExit("the torchvision peer's mask head reads p3 alone")
        net = MaskRCNN(backbone, **kwargs,
                       mask_roi_pool=MultiScaleRoIAlign(["p3"], m.pooler_resolution,
                                                        sampling_ratio=m.sampling_ratio),
                       mask_head=MaskRCNNHeads(b.fpn_channels, m.conv_dims, 1),
                       mask_predictor=MaskRCNNPredictor(m.conv_dims[-1], m.conv_dims[-1], num_classes + 1))
    else:
        net = FasterRCNN(backbone, **kwargs)
    mean = [v / 255 for v in (123.675, 116.28, 103.53)]  # detseg's Model defaults
    std = [v / 255 for v in (58.395, 57.12, 57.375)]
    net.transform = DataPipelineSized(1, 1, mean, std)
    return TorchvisionInDetsegLoop(net, with_masks=head.mask is not None)


class TorchvisionInDetsegLoop(torch.nn.Module):
    """A torchvision detector behind detseg's model interface: ``Batch`` in; the summed losses
    (``{"loss", ...}``) in training, ``{"det": [Instances]}`` in the files' pixels in eval."""

    def __init__(self, net, with_masks: bool):
        super().__init__()
        self.net, self.with_masks = net, with_masks

    def forward(self, batch):
        from detseg.structures import Batch, Instances
        batch = Batch.of(batch)
        dev = next(self.parameters()).device
        images = [batch.images[i, :, :h, :w].to(dev).float() / 255
                  for i, (h, w) in enumerate(batch.image_sizes)]
        if self.training:
            # torchvision's labels are 1..K with 0 the background; detseg's are 0..K-1
            targets = [{"boxes": t["boxes"].to(dev).float(), "labels": t["labels"].to(dev) + 1,
                        **({"masks": t["masks"].to(dev)} if self.with_masks else {})}
                       for t in batch.targets]
            losses = self.net(images, targets)
            return {"loss": sum(losses.values()), **losses}
        # GeneralizedRCNN.forward with the files' sizes as the "original" ones: boxes mapped
        # and masks pasted at each file's size by torchvision's own postprocess
        net = self.net
        image_list, _ = net.transform(images)
        features = net.backbone(image_list.tensors)
        proposals, _ = net.rpn(image_list, features)
        detections, _ = net.roi_heads(features, proposals, image_list.image_sizes)
        files = [tuple(int(v) for v in hw) for hw in batch.orig_sizes]
        detections = net.transform.postprocess(detections, image_list.image_sizes, files)
        return {"det": [Instances(hw, d["boxes"], d["scores"], d["labels"] - 1,
                                  d["masks"][:, 0] >= 0.5 if "masks" in d else None)
                        for d, hw in zip(detections, files)]}


# -- one training run (in its own process) --------------------------------------------------------
def overrides_for(args) -> list[str]:
    if args.quick:
        return ["solver.max_iter=4", "solver.warmup_iters=2", "data.batch_size=2",
                "data.shapes.num_train=8", "data.shapes.num_val=4", "data.num_workers=0", *args.set]
    return [f"solver.max_iter={args.iters}", f"data.shapes.num_val={args.val_images}", *args.set]


def prepare_data(args) -> None:
    """Generate the shapes data once, before runs that would otherwise all generate it at once."""
    from detseg.config import load_config
    from detseg.data.build import resolve_splits
    for model in args.models:
        resolve_splits(load_config(os.path.join(ROOT, RECIPES[model]), overrides_for(args)))


def run_one(model: str, impl: str, seed: int, device: str, overrides: list[str], out: str) -> dict:
    """Train one (recipe, implementation, seed); returns its figures."""
    from detseg.config import load_config
    from detseg.data.build import build_train_loader, resolve_splits
    from detseg.engine.trainer import Trainer, seed_everything
    from detseg.evaluation.runner import build_datasets_and_evaluator
    from detseg.modeling.model import build_model

    cfg = load_config(os.path.join(ROOT, RECIPES[model]), [
        *overrides, f"runtime.seed={seed}", f"runtime.device={device}", "evaluator.val_loss=false",
        "evaluator.diagnostics=false"])
    iters = cfg.solver.max_iter
    cfg.solver.eval_period = cfg.solver.checkpoint_period = iters  # one evaluation, at the end
    seed_everything(seed, False)
    datasets, evaluate = build_datasets_and_evaluator(cfg, resolve_splits(cfg), None)
    train_ds = datasets["train"]
    net = build_model(cfg, train_ds.num_classes) if impl == "detseg" else \
        torchvision_detector(cfg, train_ds.num_classes)
    trainer = Trainer(cfg, net, lambda start: build_train_loader(cfg, train_ds, start), evaluate, out, {})
    metrics = trainer.train()
    with open(os.path.join(out, "metrics.jsonl"), encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    train_s = [r for r in rows if "time" in r][-1]["time"]
    return {"model": model, "impl": impl, "seed": seed, "iterations": iters,
            "box_ap": metrics["AP"], "box_ap50": metrics["AP50"],
            "mask_ap": metrics.get("segm_AP"), "mask_ap50": metrics.get("segm_AP50"),
            "s_per_iter": train_s / iters, "val_images": len(datasets["val"]),
            "threads": torch.get_num_threads(), "device": str(trainer.device)}


def run_all(args, jobs: list[tuple[str, str, int]]) -> list[dict]:
    """Each run in a fresh process (``--jobs`` at a time): no state or allocator history carried
    from one run into the next."""
    results, running = [], []
    with tempfile.TemporaryDirectory() as tmp:
        pending = list(jobs)
        while pending or running:
            while pending and len(running) < args.jobs:
                model, impl, seed = pending.pop(0)
                out = os.path.join(tmp, f"{model}-{impl}-{seed}")
                cmd = [sys.executable, os.path.abspath(__file__), "--run", f"{model},{impl},{seed}",
                       "--out", out, "--device", args.device, "--iters", str(args.iters),
                       "--val-images", str(args.val_images)] + (["--quick"] if args.quick else []) + \
                    [a for kv in args.set for a in ("--set", kv)]
                log = open(out + ".log", "w", encoding="utf-8")
                running.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), out, log))
            time.sleep(1)
            for proc, out, log in list(running):
                if proc.poll() is None:
                    continue
                running.remove((proc, out, log))
                log.close()
                if proc.returncode != 0:
                    with open(out + ".log", encoding="utf-8") as f:
                        sys.stderr.write(f.read()[-3000:])
                    raise SystemExit(f"run {os.path.basename(out)} failed (exit {proc.returncode})")
                with open(os.path.join(out, "result.json"), encoding="utf-8") as f:
                    r = json.load(f)
                r["jobs"] = args.jobs  # runs at a time: whether its s / iteration is a run alone's
                print(f"{r['model']} {r['impl']} seed {r['seed']}: box AP {r['box_ap']:.3f}"
                      + (f" mask AP {r['mask_ap']:.3f}" if r["mask_ap"] is not None else "")
                      + f", {r['s_per_iter']:.3f} s/iter", flush=True)
                results.append(r)
    return results


def variant(run: dict) -> str:
    """A run's config overrides beyond the recipe (``--set``), as one string; "" for the recipe."""
    return " ".join(run.get("overrides", []))


def summarise(results: list[dict], jobs: int) -> tuple[str, dict]:
    """The table (a row per recipe, implementation and variant, its seeds side by side) and the
    figures: the recipes' runs under the issue's keys, the variants' under ``variants``."""
    rows, figures = [], {"runs": results}
    variants = list(dict.fromkeys(variant(r) for r in results))
    for model in RECIPES:
        for impl in IMPLS:
            for var in variants:
                # seed order, not the order the runs finished in: both rows' columns line up
                mine = sorted((r for r in results
                               if r["model"] == model and r["impl"] == impl and variant(r) == var),
                              key=lambda r: r["seed"])
                if not mine:
                    continue
                means = {key: statistics.mean(vals) for key in ("box_ap", "mask_ap", "s_per_iter")
                         if (vals := [r[key] for r in mine if r[key] is not None])}
                if var:
                    figures.setdefault("variants", {})[f"{model} {impl} {var}"] = means
                else:
                    figures.setdefault(impl, {})[model] = means

                def col(key, fmt="{:.3f}"):
                    vals = [r[key] for r in mine]
                    if any(v is None for v in vals):
                        return "-"
                    return " / ".join(fmt.format(v) for v in vals) + (
                        f" (mean {fmt.format(statistics.mean(vals))})" if len(vals) > 1 else "")
                seeds = " / ".join(str(r["seed"]) for r in mine)
                rows.append([model, impl, f"`{var}`" if var else "-", seeds, mine[0]["iterations"],
                             col("box_ap"), col("box_ap50"), col("mask_ap"), col("s_per_iter")])
    for model in RECIPES:  # JSON keys the issue names: detseg.box_ap, speedup.train_step, ...
        d, t = figures.get("detseg", {}).get(model), figures.get("torchvision", {}).get(model)
        if d and t:
            figures.setdefault("speedup", {})[f"train_step_{model}"] = t["s_per_iter"] / d["s_per_iter"]
            figures.setdefault("ap_gain", {})[f"box_{model}"] = d["box_ap"] - t["box_ap"]
            if "mask_ap" in d and "mask_ap" in t:
                figures["ap_gain"][f"mask_{model}"] = d["mask_ap"] - t["mask_ap"]
    for impl in IMPLS:  # flat keys as the issue spells them (the Faster R-CNN box AP, the Mask mask AP)
        if impl in figures:
            f = figures[impl]
            if "faster" in f:
                f["box_ap"] = f["faster"]["box_ap"]
            if "mask" in f and "mask_ap" in f["mask"]:
                f["mask_ap"] = f["mask"]["mask_ap"]
    if "speedup" in figures and "train_step_faster" in figures["speedup"]:
        figures["speedup"]["train_step"] = figures["speedup"]["train_step_faster"]
    body = markdown_table(["recipe", "implementation", "overrides", "seeds", "iterations", "box AP",
                           "box AP50", "mask AP", "s / iteration"], rows)
    dev = results[0]["device"] if results else "?"
    body += (f"\n\nFrom scratch, the same batches for both sides, one final evaluation on shapes val "
             f"({results[0]['val_images'] if results else '?'} images, pycocotools), device {dev}, "
             f"torch threads {results[0]['threads'] if results else '?'}. Values per seed, then their mean.")
    if jobs > 1:
        body += (f" The runs shared the machine ({jobs} at a time), so their seconds per iteration "
                 "are not comparable with each other or with a run alone.")
    for model in RECIPES:
        if f"train_step_{model}" in figures.get("speedup", {}):
            g = figures["ap_gain"]
            body += (f" {model}: detseg box AP {g[f'box_{model}']:+.3f} vs torchvision"
                     + (f", mask AP {g[f'mask_{model}']:+.3f}" if f"mask_{model}" in g else "")
                     + (f", step {figures['speedup'][f'train_step_{model}']:.2f}x torchvision's speed"
                        if jobs == 1 else "") + ".")
    return body, figures


def load_reported(specs: list[str]) -> list[dict]:
    """The runs stored in ``--report`` JSON files. ``PATH=OVERRIDES`` sets the overrides of that
    file's runs (for runs stored before they were recorded, or to state them against today's
    recipe); a bare ``PATH`` keeps what each run recorded."""
    runs = []
    for spec in specs:
        path, has_label, label = spec.partition("=")
        try:
            with open(path, encoding="utf-8") as f:
                stored = json.load(f)["runs"]
        except (OSError, ValueError, KeyError) as e:
            raise SystemExit(f"--report {path}: not a JSON file of this benchmark's runs ({e})")
        for r in stored:
            if has_label:
                r = {**r, "overrides": label.split()}
            runs.append(r)
    return runs


def main(argv=None) -> int:
    p = base_parser(__doc__)
    p.add_argument("--models", nargs="+", choices=list(RECIPES), default=list(RECIPES))
    p.add_argument("--impls", nargs="+", choices=IMPLS, default=list(IMPLS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--iters", type=int, default=780)
    p.add_argument("--val-images", type=int, default=VAL_IMAGES)
    p.add_argument("--device", default="cpu")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time (times then not comparable)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override for every run (a detseg variant: the torchvision peer "
                        "reads only the settings it shares)")
    p.add_argument("--report", nargs="+", metavar="JSON[=OVERRIDES]",
                   help="train nothing: render the runs stored in these --json files as one table "
                        "(=OVERRIDES: the config overrides of that file's runs, space-separated)")
    p.add_argument("--note", help="a sentence to add below the table (how the runs were made)")
    p.add_argument("--run", help=argparse.SUPPRESS)  # model,impl,seed: one run, in this process
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.run:
        model, impl, seed = args.run.split(",")
        os.environ.setdefault("DETSEG_NO_PROGRESS", "1")
        r = run_one(model, impl, int(seed), args.device, overrides_for(args), args.out)
        r["overrides"] = args.set
        with open(os.path.join(args.out, "result.json"), "w", encoding="utf-8") as f:
            json.dump(r, f)
        return 0
    if args.report:
        results = load_reported(args.report)
        # runs stored since they recorded it say how many shared the machine
        body, figures = summarise(results, max(r.get("jobs", 1) for r in results))
        files = ", ".join(f"`{os.path.basename(spec.partition('=')[0])}`" for spec in args.report)
        body += f" The runs stored in {files}."
    else:
        if args.quick:
            args.models, args.seeds = ["faster"], args.seeds[:1]
        jobs = [(m, i, s) for m in args.models for s in args.seeds for i in args.impls]
        prepare_data(args)
        results = run_all(args, jobs)
        body, figures = summarise(results, args.jobs)
    if args.note:
        body += " " + args.note
    finish(args, "vs_torchvision_training", "Training from scratch: detseg vs torchvision (shapes)", body,
           figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
