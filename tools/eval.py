"""Evaluate a checkpoint on a COCO-format dataset: the numbers the trainer logs, from the file alone.

    python tools/eval.py --weights runs/x/best.pth                        # the config's val split
    python tools/eval.py --weights runs/x/best.pth --ann-file A.json --image-dir IMGS
    python tools/eval.py --weights runs/x/best.pth evaluator.backend=faster_coco_eval
    python tools/eval.py --weights runs/pan/best.pth --ann-file instances_val2017.json \
        --image-dir val2017 --panoptic-file panoptic_val2017.json      # + PQ / SQ / RQ

Detection heads: COCO box (and mask) AP and a per-class AP table; FCN heads: mIoU and pixel
accuracy; panoptic models with panoptic ground truth: PQ, SQ and RQ, for things and stuff.
Writes metrics.json (and coco_results.json) into --output (default: an ``eval`` folder beside
the weights). Overrides of ``model.panoptic`` change the merge that is scored.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from detseg.config import ConfigError  # noqa: E402
from detseg.data.io import DataError  # noqa: E402
from detseg.engine.checkpoint import CheckpointError  # noqa: E402


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True)
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides of the checkpoint's config")
    p.add_argument("--config", help="config replacing the checkpoint's own")
    p.add_argument("--ann-file", help="COCO annotations to evaluate on (default: the config's val split)")
    p.add_argument("--image-dir", help="their images")
    p.add_argument("--panoptic-file", help="COCO panoptic ground truth of the same images (a panoptic "
                   "model is then scored with PQ); its PNGs in --panoptic-dir or beside it")
    p.add_argument("--panoptic-dir", help="the panoptic PNG folder (default: --panoptic-file without .json)")
    p.add_argument("--output", help="folder for metrics.json (default: <weights folder>/eval); an "
                   "existing one only when empty or holding an earlier eval.py output")
    p.add_argument("--overwrite", action="store_true",
                   help="write into an output folder that holds other files (same names are replaced)")
    p.add_argument("--device", default="auto")
    return p


def own_train_split(cfg, generate: bool):
    """The model's own training split, whose class frequencies give the rare / common / frequent
    split of the figures (APr ...); None where it is not on this machine (the evaluation goes on
    without the split). ``generate``: the built-in shapes may be written for it (an evaluation
    on the config's own val split, which needs them anyway)."""
    from detseg.data.build import resolve_splits
    if not (cfg.data.train.ann_file or cfg.data.train.image_dir or generate):
        return None
    try:
        return resolve_splits(cfg).get("train")
    except (ConfigError, DataError):
        return None


def main(argv=None) -> int:
    from detseg.utils import parse_once
    args = parse_once(get_parser(), argv, intermixed=True)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import torch

    from detseg.api import load_model
    from detseg.config import apply_overrides, from_dict, to_dict
    from detseg.data.build import resolve_splits
    from detseg.evaluation.coco import format_per_class
    from detseg.utils import write_json_atomic
    from detseg.evaluation.runner import build_datasets_and_evaluator
    from detseg.modeling.heads import head_class
    from detseg.export.format import is_exported
    from detseg.outputs import claim_dir
    from detseg.utils import UsageError
    try:
        if os.path.isfile(args.weights) and is_exported(args.weights):
            raise UsageError(f"{args.weights}: an exported model holds no training config or data "
                             f"pipeline to evaluate with; evaluate the .pth checkpoint it was "
                             f"exported from (tools/eval.py --weights CHECKPOINT)")
        # the model exactly as the trainer evaluated it (no inference-time folding)
        predictor = load_model(args.weights, config=args.config, device=args.device, fold_bn=False)
        cfg = from_dict(apply_overrides(to_dict(predictor.cfg), {}, args.overrides))
        if predictor.model.panoptic is not None:  # the merge's settings may be overridden too
            from detseg.modeling.model import panoptic_settings
            predictor.model.panoptic = panoptic_settings(cfg) or predictor.model.panoptic
        if args.ann_file:
            split = {"ann_file": args.ann_file, "image_dir": args.image_dir or os.path.dirname(args.ann_file)}
            if args.panoptic_file:
                from detseg.data.panoptic_format import panoptic_paths
                split.update(panoptic_paths(args.panoptic_file, args.panoptic_dir))
            for settings in cfg.model.heads.values():  # a cache made for another dataset would not fit
                proposals = head_class(settings).proposal_settings(settings)
                if proposals is not None:
                    proposals.val_file = None
        else:
            split = resolve_splits(cfg).get("val")
            if split is None:
                raise ConfigError("the config has no val split; pass --ann-file and --image-dir")
        train_split = own_train_split(cfg, generate=not args.ann_file)
        out_dir = args.output or os.path.join(os.path.dirname(os.path.abspath(args.weights)), "eval")
        # the data first: a bad annotation file is named before anything about the output
        datasets, evaluate = build_datasets_and_evaluator(cfg, {"val": split}, out_dir, predictor.class_names,
                                                          train_split=train_split)
        output = claim_dir(out_dir, "eval", overwrite=args.overwrite,
                           inputs=[args.weights, args.config, split["ann_file"], split["image_dir"],
                                   split.get("panoptic_json"), split.get("panoptic_dir")])
        dataset = datasets["val"]
    except (CheckpointError, ConfigError, DataError, UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if dataset.cat_ids != predictor.cat_ids:
        print(f"error: {split['ann_file'] or split['image_dir']} has categories {dataset.cat_ids}, the model was trained on "
              f"{predictor.cat_ids}", file=sys.stderr)
        return 2
    stuff = getattr(dataset, "stuff_cat_ids", None)
    if getattr(dataset, "panoptic", None) is not None and stuff != (predictor.stuff_cat_ids or []):
        print(f"error: {split['panoptic_json']} has stuff categories {dataset.stuff_cat_ids}, the model was "
              f"trained on {predictor.stuff_cat_ids or 'none'}", file=sys.stderr)
        return 2
    with torch.no_grad():
        metrics = evaluate(predictor.model)
    write_json_atomic(metrics, os.path.join(out_dir, "metrics.json"))
    from detseg.visualize import write_diagnostics
    for path in write_diagnostics(metrics, out_dir):
        logging.info("wrote %s", path)
    for key in [k for k in metrics if k.endswith("per_class_AP")]:
        print(f"{key}:\n{format_per_class(metrics[key])}")
    if "PQ" in metrics:
        from detseg.evaluation.panoptic_quality import format_pq
        print(f"panoptic quality:\n{format_pq(metrics)}")
    summary = {k: v for k, v in metrics.items() if isinstance(v, float)}
    print(json.dumps(summary, indent=2))
    output.list_files(complete=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
