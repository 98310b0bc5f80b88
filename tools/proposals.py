"""Precompute selective-search proposals for a COCO-format dataset (as R-CNN's authors did).

    python tools/proposals.py --ann-file A.json --image-dir IMGS [--mode fast|quality] [--out F.npz]
    python tools/proposals.py --config configs/rcnn_resnet18_shapes.yaml   # both splits of a config

The cache (default: beside the annotation file) is read by image id at train time. The
proposals' recall of the ground truth (IoU >= 0.5 and 0.7) is printed.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from detseg.config import ConfigError, load_config  # noqa: E402
from detseg.data.io import DataError  # noqa: E402


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="take the splits, mode and limits from this config")
    p.add_argument("overrides", nargs="*", help="key.sub=value config overrides")
    p.add_argument("--ann-file", help="COCO annotation file (instead of --config)")
    p.add_argument("--image-dir", help="its image folder")
    p.add_argument("--mode", choices=["fast", "quality"], default=None)
    p.add_argument("--max-per-image", type=int, default=None)
    p.add_argument("--out", help="cache file (default: beside the annotation file)")
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    p.add_argument("--force", action="store_true", help="recompute even if the cache exists")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file that is "
                   "not a proposal cache (never the annotation file, images or config read)")
    return p


def _jobs(args) -> list[tuple[str, str, str | None, str, int]]:
    if args.ann_file:
        if not args.image_dir:
            raise ConfigError("--ann-file needs --image-dir")
        return [(args.ann_file, args.image_dir, args.out, args.mode or "fast", args.max_per_image or 2000)]
    from detseg.data.build import resolve_splits
    from detseg.modeling.model import data_needs
    cfg = load_config(args.config, args.overrides)
    p = data_needs(cfg).proposals
    if p is None:
        raise ConfigError(f"{args.config}: no head of this config reads selective-search proposals")
    mode, limit = args.mode or p.mode, args.max_per_image or p.max_per_image
    splits = resolve_splits(cfg)
    out = [(splits["train"]["ann_file"], splits["train"]["image_dir"], p.train_file, mode, limit)]
    if splits.get("val"):
        out.append((splits["val"]["ann_file"], splits["val"]["image_dir"], p.val_file, mode, limit))
    return out


def main(argv=None) -> int:
    from detseg.utils import parse_once
    args = parse_once(get_parser(), argv, intermixed=True)
    import numpy as np

    from detseg.data.coco import CocoDataset
    from detseg.data import proposal_cache as ss
    if args.workers < 0 or (args.max_per_image is not None and args.max_per_image < 1):
        print("error: --workers must be >= 0 (0: in this process) and --max-per-image >= 1",
              file=sys.stderr)
        return 2
    from detseg.outputs import check_output_file
    from detseg.utils import UsageError

    def is_cache(path: str) -> bool:
        ss.load_cache(path)
        return True
    try:
        jobs = _jobs(args)
        # the image folders too for a path the user chose; the default, beside the annotation
        # file, may sit in the image folder where that is where the dataset keeps it
        read = [args.config] + [p for job in jobs for p in (job[:2] if job[2] else job[:1])]
        for ann_file, _, out, mode, _ in jobs:
            check_output_file(out or ss.default_cache_path(ann_file, mode), inputs=read,
                              overwrite=args.overwrite, ours=is_cache, what="--out",
                              kind="proposal cache")
    except (ConfigError, DataError, UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for ann_file, image_dir, out, mode, limit in jobs:
        path = out or ss.default_cache_path(ann_file, mode)
        try:
            if args.force or not os.path.isfile(path):
                props = ss.compute_for_dataset(ann_file, image_dir, mode, limit, args.workers)
                ss.save_cache(path, props, mode, limit)
            props = ss.load_cache(path)
        except (DataError, ss.ProposalError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        except OSError as e:  # an unwritable --out
            print(f"error: {path}: cannot write the cache ({e.strerror or e})", file=sys.stderr)
            return 1
        ds = CocoDataset(ann_file, image_dir)
        gt = {i: ds.load_annotations(i, ds.coco.imgs[i]["height"], ds.coco.imgs[i]["width"])["boxes"]
              for i in ds.ids}
        counts = [len(v) for v in props.values()]
        print(f"{path}: {len(props)} images, {np.mean(counts) if counts else 0:.0f} proposals per image, "
              f"recall@0.5 {ss.recall(props, gt, 0.5):.3f}, recall@0.7 {ss.recall(props, gt, 0.7):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
