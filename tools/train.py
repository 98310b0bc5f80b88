"""Train a detseg model.

    python tools/train.py --config configs/quickstart.yaml # FCN-8s ResNet-18 on built-in shapes, 4.6 min
    python tools/train.py                                  # the built-in defaults (the same, 1700 iterations)
    python tools/train.py --config configs/fcn8s_vgg16_shapes.yaml solver.max_iter=2000
    python tools/train.py --config CFG --resume --output-dir runs/x
    python tools/train.py --config CFG --init-from runs/coco/best.pth     # fine-tune
    python tools/train.py --config CFG --print-config
    python tools/train.py --config CFG --check-data

Overrides are ``key.sub=value`` arguments checked against the config schema.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from detseg.config import ConfigError, load_config, to_dict, to_yaml  # noqa: E402
from detseg.data.io import DataError  # noqa: E402
from detseg.data.proposal_cache import ProposalError  # noqa: E402
from detseg.engine.checkpoint import CheckpointError  # noqa: E402
from detseg.modeling.backbones import WeightsError  # noqa: E402
from detseg.outputs import OutputRefused  # noqa: E402
from detseg.utils import (UsageError, check_device, check_output_dir, next_numbered_dir,  # noqa: E402
                          parse_once, write_json_atomic)


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML config (default: built-in defaults)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--resume", action="store_true", help="continue from the newest loadable checkpoint")
    p.add_argument("--init-from", metavar="PATH",
                   help="start from the weights of this checkpoint or state dict that fit "
                        "(model.init_from; class rows move by class name); optimizer, schedule "
                        "and iteration start fresh")
    p.add_argument("--output-dir", help="run folder (default: runs/<config name>/<n>); an existing "
                   "one only when empty, or a run of this config with --resume")
    p.add_argument("--overwrite", action="store_true",
                   help="train into a folder that holds other files or another run (its "
                        "checkpoints are removed; other files are left, never written over)")
    p.add_argument("--eval-only", action="store_true",
                   help="evaluate best.pth (or --weights) exactly as tools/eval.py does, and exit")
    p.add_argument("--weights", help="checkpoint for --eval-only")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: runtime.device)")
    p.add_argument("--deterministic", action="store_true", help="seed everything, deterministic ops")
    p.add_argument("--check-data", action="store_true", help="run the dataset doctor and exit")
    p.add_argument("--summary", action="store_true",
                   help="after training, print parameters per part, FLOPs and images/s (tools/summary.py)")
    return p


def next_run_dir(config_path: str | None, root: str = "runs") -> str:
    name = os.path.splitext(os.path.basename(config_path))[0] if config_path else "default"
    return next_numbered_dir(os.path.join(root, name))


def run_inputs(args, cfg, splits: dict) -> list:
    """Every file and folder a training run reads: its config, data, and weights."""
    found = [args.config, cfg.model.init_from]
    weights = cfg.model.backbone.weights
    if weights and os.path.exists(weights):
        found.append(weights)
    for split in splits.values():
        if split is not None:
            found += [split["ann_file"], split["image_dir"]]
    return found


def main(argv=None) -> int:
    # intermixed: overrides may come before or after the --options
    args = parse_once(get_parser(), argv, intermixed=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides = list(args.overrides)
    if args.device:
        overrides.append(f"runtime.device={args.device}")
    if args.deterministic:
        overrides.append("runtime.deterministic=true")
    if args.output_dir:
        overrides.append(f"runtime.output_dir={args.output_dir}")
    if args.init_from and args.resume:
        print("error: --init-from and --resume: give one. --resume continues a run from its own "
              "newest checkpoint (which already holds the initialised weights); --init-from starts "
              "a new run. To make a fine-tuning run resumable with one command, set "
              "model.init_from in its config: --resume then loads the run's checkpoint when there "
              "is one and applies init_from only when there is none.", file=sys.stderr)
        return 2
    if args.init_from:
        overrides.append(f"model.init_from={args.init_from}")
    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        print(to_yaml(cfg), end="")
        return 0
    try:
        check_device(cfg.runtime.device)
        if not (args.check_data or args.eval_only) and not cfg.runtime.output_dir:  # a numbered run folder
            check_output_dir("runs")
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if cfg.model.init_from and not os.path.isfile(cfg.model.init_from):
        print(f"config error: model.init_from: {cfg.model.init_from}: file not found (a COCO detector "
              f"from torchvision: tools/convert_weights.py writes it, see weights/README.md)",
              file=sys.stderr)
        return 2

    if args.eval_only:
        return eval_only(args, cfg)

    from detseg.data.build import resolve_splits
    try:
        splits = resolve_splits(cfg)
    except DataError as e:
        print(f"data error: {e}", file=sys.stderr)
        return 1
    if not args.check_data and cfg.runtime.output_dir:
        from detseg.engine.run_folder import claim_run_dir
        try:  # checked at the door; run() marks it as this run's once training starts
            claim_run_dir(cfg.runtime.output_dir, cfg, resume=args.resume, overwrite=args.overwrite,
                          inputs=run_inputs(args, cfg, splits), claim=False)
            check_output_dir(cfg.runtime.output_dir)
        except (OutputRefused, UsageError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    if args.check_data:
        from detseg.data.classification import check_folder, format_counts
        from detseg.data.validate import check_dataset, format_table
        bad = 0
        for name, split in splits.items():
            if split is None:
                continue
            counts = None
            if split["ann_file"] is None:  # a classification folder per class
                problems, counts = check_folder(split["image_dir"])
            else:
                problems = check_dataset(split["ann_file"], split["image_dir"])
            bad += len(problems)
            print(f"{name}: {split['ann_file'] or split['image_dir']}: {len(problems)} problem(s)")
            if problems:
                print(format_table(problems))
            if counts:
                print(format_counts(counts))
        return 1 if bad else 0

    try:
        return run(cfg, splits, args)
    except (ConfigError, DataError, FloatingPointError, ProposalError, CheckpointError, WeightsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def eval_only(args, cfg) -> int:
    """``--eval-only``: exactly ``tools/eval.py`` on ``--weights`` (default: the run folder's
    best.pth) with this config and these overrides; its metrics.json and diagnostics go into an
    ``eval`` folder beside the weights."""
    from tools import eval as eval_tool
    weights = args.weights or (cfg.runtime.output_dir and os.path.join(cfg.runtime.output_dir, "best.pth"))
    if not weights:
        print("error: --eval-only needs --weights CHECKPOINT or --output-dir RUN (its best.pth)",
              file=sys.stderr)
        return 2
    config = ["--config", args.config] if args.config else []
    return eval_tool.main(["--weights", weights, *config, "--device", cfg.runtime.device,
                           *args.overrides])


def apply_class_counts(model, train_ds, output_dir: str) -> None:
    """Class weights for the heads whose loss asks for them (``loss.class_weight``), from the
    training data's counts: counted once and kept in the run folder's ``class_counts.json``, which
    a resumed run reads back instead of counting again."""
    from detseg import comm as dist
    heads = [h for h in model.heads.values() if getattr(h, "class_weighted", False)]
    if not heads:
        return
    path = os.path.join(output_dir, "class_counts.json")
    stored = {}
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            stored = json.load(f)
    counts = dict(stored.get("counts", {}))
    for head in heads:
        kind = head.count_kind
        if kind not in counts:  # each dataset counts what its heads can ask of it
            counter = getattr(train_ds, {"pixels": "pixel_counts", "instances": "instance_counts",
                                         "images": "class_counts"}[kind], None)
            if counter is None:
                raise ConfigError(f"loss.class_weight: a {type(train_ds).__name__} has no {kind} to count "
                                  f"class weights from")
            counts[kind] = counter()
        head.set_class_counts(counts[kind])
    for head in heads:
        names = ((["background"] if head.count_kind == "pixels" else []) + list(train_ds.class_names)
                 + (["background"] if getattr(head, "background_last", False) else []))
        logging.info("class weights from the training %s per class: %s", head.count_kind,
                     ", ".join(f"{n} {w:.3g}" for n, w in zip(names, head.class_weight.tolist())))
    if dist.is_main() and counts != stored.get("counts"):
        write_json_atomic({"class_names": list(train_ds.class_names), "counts": counts}, path, indent=1)


def run(cfg, splits: dict, args) -> int:
    from detseg.data.build import build_train_loader
    from detseg import comm as dist
    from detseg.engine.init_from import init_from
    from detseg.engine.run_folder import claim_run_dir
    from detseg.engine.trainer import Trainer, seed_everything
    from detseg.evaluation.runner import build_datasets_and_evaluator
    from detseg.modeling.model import build_model

    dist.init(cfg.runtime.device)  # before any sampler is built: they shard by rank
    seed_everything(cfg.runtime.seed, cfg.runtime.deterministic)
    output_dir = cfg.runtime.output_dir
    if not output_dir and dist.is_main():  # a new numbered folder
        output_dir = next_run_dir(args.config)
    output_dir = dist.broadcast_object(output_dir)
    # main() checked a given folder; this marks it (or the new one) as this run's
    # rank 0 writes; every rank checked the folder in main(), before anything was written to it
    claimed = None if not dist.is_main() else claim_run_dir(
        output_dir, cfg, resume=args.resume, overwrite=args.overwrite)
    datasets, evaluate = build_datasets_and_evaluator(cfg, splits, output_dir)
    train_ds = datasets["train"]
    model = build_model(cfg, train_ds.num_classes, getattr(train_ds, "num_stuff", None))

    if cfg.solver.rebalance.method != "none":  # a model with nothing to re-fit: one line, before training
        from tools.rebalance import pick_head
        try:
            pick_head(model, cfg.solver.rebalance.head, setting="head")
        except UsageError as e:
            raise ConfigError(f"solver.rebalance: {e}") from None
    apply_class_counts(model, train_ds, output_dir)
    meta = {"class_names": train_ds.class_names, "label_map": train_ds.label_map(),
            "num_classes": train_ds.num_classes}
    trainer = Trainer(cfg, model, lambda start: build_train_loader(cfg, train_ds, start),
                      evaluate, output_dir, meta)
    resumed = args.resume and trainer.resume()
    if args.resume and not resumed:
        logging.info("no loadable checkpoint in %s; starting %s", output_dir,
                     "from model.init_from" if cfg.model.init_from else "from scratch")
    if cfg.model.init_from and resumed:
        logging.info("resumed: model.init_from (%s) is not applied again", cfg.model.init_from)
    elif cfg.model.init_from:
        try:
            report = init_from(trainer.model, cfg.model.init_from, train_ds.class_names,
                               cfg.model.init_class_map, backbone=cfg.model.backbone.name)
        except CheckpointError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        logging.info("%s", report.summary())
        if dist.is_main():
            write_json_atomic(report.as_dict(), os.path.join(output_dir, "init_report.json"), indent=1)
    if dist.is_main():
        import yaml

        from detseg.utils import atomic_write
        with atomic_write(os.path.join(output_dir, "config.yaml"), "w") as f:
            yaml.safe_dump(to_dict(cfg), f, sort_keys=False)
    main_rank = dist.is_main()
    if not resumed:
        trainer.start_metrics()  # a fresh start of a run whose earlier start was killed
    try:
        metrics = trainer.train()
    finally:
        dist.shutdown()
    code = 0
    if main_rank:
        if cfg.solver.rebalance.method != "none":
            code = rebalance_after_training(cfg, output_dir, evaluated=evaluate is not None)
        claimed.list_files(complete=True)
    summary = {k: v for k, v in metrics.items() if isinstance(v, float)}
    if main_rank:
        print(f"done: {output_dir} iteration {trainer.iter} {json.dumps(summary)}")
        if args.summary:
            from detseg.engine.summary import format_summary, summarize
            batch = next(iter(build_train_loader(cfg, train_ds)))
            size = (cfg.data.min_size_test, cfg.data.min_size_test)
            print(format_summary(summarize(trainer.model, size, batch)))
    return code


def rebalance_after_training(cfg, output_dir: str, evaluated: bool) -> int:
    """``solver.rebalance``: the trained model's (best.pth, else the newest checkpoint's) last
    layer re-fitted on SMOTE-balanced feature vectors of the training split, exactly as
    ``tools/rebalance.py`` does, into ``<run>/rebalanced`` (``model.pth``, ``rebalance.json``;
    with a val split also ``eval_before`` / ``eval_after``). Run again on ``--resume``: it only
    reads the checkpoint, so a killed re-fit leaves the training run intact."""
    from detseg.engine.checkpoint import newest_loadable
    from tools import rebalance as rebalance_tool
    rb = cfg.solver.rebalance
    best = os.path.join(output_dir, "best.pth")
    # the newest that loads: a broken newest checkpoint falls back to the one before (the tool
    # then reads it again; only without a val split, where there is no best.pth)
    weights = best if os.path.isfile(best) else newest_loadable(output_dir)[0]
    argv = ["--weights", weights, "--output", os.path.join(output_dir, "rebalanced"), "--method", rb.method,
            "--k-neighbors", str(rb.k_neighbors), "--negatives-per-image", str(rb.negatives_per_image),
            "--device", cfg.runtime.device, "--seed", str(cfg.runtime.seed), "--overwrite"]
    argv += (["--head", rb.head] if rb.head else []) + (["--eval"] if evaluated else [])
    return rebalance_tool.main(argv)


if __name__ == "__main__":
    sys.exit(main())
