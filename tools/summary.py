"""How big and how fast a model is: parameters per part (backbone, FPN, each head), FLOPs at an
input size, and measured images/s for inference and for a training step on this device.

    python tools/summary.py --config configs/faster_rcnn_resnet18_shapes.yaml
    python tools/summary.py --weights runs/x/best.pth --size 800 1216 --json summary.json
    python tools/summary.py --config CFG --no-timing          # parameters and FLOPs only
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML config (default: built-in defaults)")
    p.add_argument("--weights", help="a detseg checkpoint instead (its own config and classes)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides of the config")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"),
                   help="input size for FLOPs and inference timing (default: the config's test size, square)")
    p.add_argument("--device", default="auto")
    p.add_argument("--repeats", type=int, default=3, help="timed runs (median), after one warm-up")
    p.add_argument("--no-timing", action="store_true", help="parameters and FLOPs only")
    p.add_argument("--json", metavar="PATH", help="also write the figures as JSON (an existing file "
                   "only when an earlier summary.py wrote it)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file that "
                   "summary.py did not write (never the checkpoint or config read)")
    return p


def train_batch(cfg, num_classes: int):
    """One training batch of the config's train split, or None when it cannot be read."""
    from detseg.data.build import build_datasets, build_train_loader, resolve_splits
    from detseg.data.io import DataError
    try:
        splits = resolve_splits(cfg)
        ds = build_datasets(cfg, {"train": splits["train"]})["train"]
    except (DataError, OSError) as e:
        logging.warning("no training step timing: %s", e)
        return None
    if ds.num_classes != num_classes:
        logging.warning("no training step timing: the train split has %d classes, the model %d",
                        ds.num_classes, num_classes)
        return None
    return next(iter(build_train_loader(cfg, ds)))


def main(argv=None) -> int:
    from detseg.utils import parse_once
    args = parse_once(get_parser(), argv, intermixed=True)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from detseg.config import ConfigError, load_config
    from detseg.data.io import DataError
    from detseg.engine.checkpoint import CheckpointError
    from detseg.engine.summary import format_summary, summarize
    from detseg.utils import UsageError, check_device
    if args.repeats < 1 or (args.size and min(args.size) < 16):
        print("error: --repeats must be >= 1 and --size at least 16 x 16", file=sys.stderr)
        return 2
    from detseg.outputs import check_output_file, json_written_by, stamp
    try:
        device = check_device(args.device)
        if args.json:  # before minutes of timing, not after
            check_output_file(args.json, inputs=[args.weights, args.config], overwrite=args.overwrite,
                              ours=json_written_by("summary"), what="--json", kind="summary JSON")
        if args.weights:
            from detseg.api import load_model
            predictor = load_model(args.weights, config=args.config, device=device, fold_bn=False)
            model, cfg, num_classes = predictor.model, predictor.cfg, len(predictor.class_names)
        else:
            from detseg.data.build import panoptic_source, resolve_splits
            from detseg.data.coco import CocoDataset
            from detseg.modeling.model import build_model
            cfg = load_config(args.config, args.overrides)
            split = resolve_splits(cfg)["train"]
            ds = CocoDataset(split["ann_file"], split["image_dir"], panoptic=panoptic_source(cfg, split))
            num_classes = ds.num_classes
            model = build_model(cfg, num_classes, ds.num_stuff).to(device)
    except (ConfigError, DataError, CheckpointError, UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    size = tuple(args.size) if args.size else (cfg.data.min_size_test, cfg.data.min_size_test)
    if getattr(model, "resize", None) is not None:
        model.resize = None  # FLOPs and timing at --size itself, not after an in-model resize
    batch = None if args.no_timing else train_batch(cfg, num_classes)
    figures = summarize(model, size, batch, args.repeats, timing=not args.no_timing)
    figures["device"] = device
    print(format_summary(figures))
    if args.json:
        from detseg.utils import write_json_atomic
        try:
            write_json_atomic(stamp(figures, "summary"), args.json, indent=1)
        except OSError as e:
            print(f"error: {args.json}: cannot write ({e.strerror or e})", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
