"""Re-fit a trained classifier's last layer on class-balanced features (SMOTE in feature space).

    python tools/rebalance.py --weights runs/rcnn/best.pth --method smote --output runs/rcnn_smote

Reads the training split of the checkpoint's config (resized as for evaluation, no augmentation),
takes the feature vectors the head's last layer reads (an image classifier's embedding; a region
head's fc7 of every ground-truth box and of background proposals), raises every rare class to
the most frequent one with SMOTE or Borderline-SMOTE (imbalanced-learn), fits that layer again
(logistic regression for a softmax, hinge-loss linear SVMs for R-CNN's SVMs) and writes the
checkpoint with the new layer to ``--output/model.pth``; the rest of the network is unchanged.
``--eval`` scores the checkpoint before and after on the val split (tools/eval.py).
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
    from detseg.engine.rebalance import METHODS
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True, help="a detseg checkpoint (.pth)")
    p.add_argument("--output", help="folder for model.pth and rebalance.json (default: <weights folder>/rebalanced)")
    p.add_argument("--method", choices=METHODS, default="smote")
    p.add_argument("--head", help="the head to re-fit (default: the model's classify, region or rcnn head)")
    p.add_argument("--k-neighbors", type=int, default=5, help="SMOTE's same-class neighbours (default 5)")
    p.add_argument("--negatives-per-image", type=int, default=16,
                   help="region heads: background proposals per training image (default 16)")
    p.add_argument("--eval", action="store_true", help="evaluate before and after on the val split")
    p.add_argument("--overwrite", action="store_true",
                   help="write into an output folder that holds other files (same names are replaced)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    return p


def pick_head(model, name, setting: str = "--head"):
    """The head to re-fit: ``name`` (given as ``setting``, the option or config key the errors
    name), or the first with a feature-vector classifier."""
    from detseg.utils import UsageError
    usable = [n for n, h in model.heads.items() if hasattr(h, "embed") or hasattr(h, "region_features")]
    if name is not None:
        if name not in model.heads:
            raise UsageError(f"{setting} {name}: the model has heads {', '.join(model.heads)}")
        if name not in usable:
            raise UsageError(f"{setting} {name}: a {type(model.heads[name]).__name__} has no feature-vector "
                             f"classifier to re-fit (classify, region and rcnn heads have)")
        return name
    if not usable:
        raise UsageError(f"{', '.join(type(h).__name__ for h in model.heads.values())}: no classify, region "
                         f"or rcnn head to re-fit")
    return usable[0]


def main(argv=None) -> int:
    from detseg.utils import UsageError, parse_once
    args = parse_once(get_parser(), argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from detseg.api import load_model
    from detseg.data.build import build_datasets, build_val_loader, resolve_splits
    from detseg.engine import rebalance
    from detseg.engine.checkpoint import load_checkpoint, save_atomic
    from detseg.export.format import is_exported
    from detseg.outputs import claim_dir
    from detseg.utils import write_json_atomic
    if args.k_neighbors < 1 or args.negatives_per_image < 0:
        print("error: --k-neighbors must be >= 1 and --negatives-per-image >= 0", file=sys.stderr)
        return 2
    out_dir = args.output or os.path.join(os.path.dirname(os.path.abspath(args.weights)), "rebalanced")
    try:
        if os.path.isfile(args.weights) and is_exported(args.weights):
            raise UsageError(f"{args.weights}: an exported model's layers cannot be re-fitted; re-fit the "
                             f".pth checkpoint it was exported from")
        predictor = load_model(args.weights, device=args.device, fold_bn=False)
        model, cfg = predictor.model, predictor.cfg
        head = pick_head(model, args.head)
        split = resolve_splits(cfg).get("train")
        if split is None:
            raise ConfigError("the checkpoint's config has no train split to take feature vectors from")
        # the train images as evaluation reads them: resized, not augmented
        dataset = build_datasets(cfg, {"val": split}, predictor.class_names)["val"]
        output = claim_dir(out_dir, "rebalance", overwrite=args.overwrite,
                           inputs=[args.weights, split["ann_file"], split["image_dir"]])
    except (CheckpointError, ConfigError, DataError, UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    names = list(predictor.class_names)
    background = len(names) if not hasattr(model.heads[head], "embed") else None
    x, y = rebalance.classifier_features(model, head, build_val_loader(cfg, dataset),
                                         args.negatives_per_image, args.seed)
    before = rebalance.class_histogram(y, names, background)
    try:
        xr, yr = rebalance.oversample(x, y, args.method, args.k_neighbors, background, args.seed)
    except ValueError as e:
        print(f"error: {split['ann_file']}: {e}", file=sys.stderr)
        return 2
    after = rebalance.class_histogram(yr, names, background)
    layer = rebalance.refit(model, head, xr, yr)
    report = {"method": args.method, "head": head, "layer": layer, "vectors_before": before,
              "vectors_after": after, "from": os.path.abspath(args.weights)}
    print(f"{args.method}: {layer} re-fitted on {len(yr)} feature vectors ({len(yr) - len(y)} synthetic)")
    for name in after:
        print(f"  {name:<12} {before.get(name, 0):>7} -> {after[name]}")
    state = load_checkpoint(args.weights)
    state = {k: v for k, v in state.items() if k not in ("optimizer", "scaler", "rng")}
    state["model"] = model.state_dict()
    state["rebalance"] = report
    path = os.path.join(out_dir, "model.pth")
    save_atomic(state, path)
    write_json_atomic(report, os.path.join(out_dir, "rebalance.json"))
    if args.eval:
        from tools import eval as eval_tool
        for label, weights in (("before", args.weights), ("after", path)):
            code = eval_tool.main(["--weights", weights, "--output", os.path.join(out_dir, f"eval_{label}"),
                                   "--device", args.device, "--overwrite"])
            if code != 0:
                return code
            with open(os.path.join(out_dir, f"eval_{label}", "metrics.json"), encoding="utf-8") as f:
                metrics = json.load(f)
            shown = {k: round(v, 4) for k, v in metrics.items()
                     if k in ("AP", "APr", "APc", "APf", "recall_r", "top1", "balanced_accuracy", "accuracy_r")}
            print(f"{label}: {shown}")
    output.list_files(complete=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
