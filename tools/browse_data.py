"""Draw samples as the model sees them: after the configured resize (and, with --augment, the
training augmentation), with their boxes, class names and masks.

    python tools/browse_data.py --config configs/mask_rcnn_resnet18_fpn_shapes.yaml --num 16
    python tools/browse_data.py --config CFG --split val --num 8 --output browse/ --sheet

Writes one PNG per sample (``<image id>.png``) into --output (default runs/browse/<n>), or with
--sheet a single contact sheet ``sheet.png``. Class names are the dataset's.
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
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    p.add_argument("--split", choices=["train", "val"], default="train")
    p.add_argument("--num", type=int, default=16, help="samples to draw")
    p.add_argument("--augment", action="store_true",
                   help="apply the training augmentation (train split; default: resize only)")
    p.add_argument("--seed", type=int, default=0, help="which augmentation draws")
    p.add_argument("--output", help="folder (default: runs/browse/<n>); an existing one only when "
                   "empty or holding an earlier browse_data.py output")
    p.add_argument("--overwrite", action="store_true",
                   help="write into an output folder that holds other files (same names are replaced)")
    p.add_argument("--sheet", action="store_true", help="one contact sheet instead of a file each")
    return p


def sample_instances(sample: dict):
    """A dataset item's targets as ``Instances`` (score 1) in the pixels of its image tensor."""
    import torch

    from detseg.structures import Instances
    h, w = sample["image"].shape[-2:]
    n = len(sample["labels"])
    masks = sample.get("masks")
    return Instances((h, w), sample["boxes"], torch.ones(n), sample["labels"],
                     masks.bool() if masks is not None and len(masks) == n else None)


def contact_sheet(images: list, columns: int = 4, pad: int = 4):
    """RGB images side by side, ``columns`` a row, on white."""
    import numpy as np
    rows = [images[i:i + columns] for i in range(0, len(images), columns)]
    cell_h = max(im.shape[0] for im in images)
    cell_w = max(im.shape[1] for im in images)
    sheet = np.full((len(rows) * (cell_h + pad) + pad, min(columns, len(images)) * (cell_w + pad) + pad, 3),
                    255, np.uint8)
    for r, row in enumerate(rows):
        for c, im in enumerate(row):
            y, x = pad + r * (cell_h + pad), pad + c * (cell_w + pad)
            sheet[y:y + im.shape[0], x:x + im.shape[1]] = im
    return sheet


def main(argv=None) -> int:
    from detseg.utils import parse_once
    args = parse_once(get_parser(), argv, intermixed=True)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from detseg.config import ConfigError, load_config
    from detseg.data.io import DataError
    from detseg.outputs import claim_dir
    from detseg.utils import UsageError, next_numbered_dir
    if args.num < 1:
        print("error: --num must be >= 1", file=sys.stderr)
        return 2
    try:
        cfg = load_config(args.config, args.overrides)
        from detseg.data.build import build_dataset, resolve_splits
        from detseg.modeling.model import data_needs
        split = resolve_splits(cfg).get(args.split)
        if split is None:
            raise ConfigError(f"the config has no {args.split} split")
        needs = data_needs(cfg)
        ds = build_dataset(cfg, split, train=args.augment, with_masks=needs.masks, with_semantic=False)
        output = claim_dir(args.output or next_numbered_dir(os.path.join("runs", "browse")), "browse_data",
                           inputs=[args.config, split["ann_file"], split["image_dir"]],
                           overwrite=args.overwrite)
        out_dir = output.path
    except (ConfigError, DataError, UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2 if isinstance(e, (ConfigError, UsageError)) else 1
    from detseg.visualize import draw_instances, write_png
    drawn, failed = [], 0
    for index in range(min(args.num, len(ds))):
        if hasattr(ds.transform, "reseed"):  # the augmentation's draws, as the trainer seeds them
            ds.transform.reseed(args.seed * 1_000_003 + index)
        try:
            sample = ds[index]
        except DataError as e:
            logging.warning("skipped: %s", e)
            failed += 1
            continue
        image = sample["image"].permute(1, 2, 0).numpy()
        picture = draw_instances(image, sample_instances(sample), ds.class_names, scores=False)
        drawn.append((sample["image_id"], picture))
    try:
        if args.sheet and drawn:
            write_png(os.path.join(out_dir, "sheet.png"), contact_sheet([p for _, p in drawn])[..., ::-1])
        else:
            for image_id, picture in drawn:
                write_png(os.path.join(out_dir, f"{image_id}.png"), picture[..., ::-1])
    except OSError as e:
        print(f"error: {out_dir}: {e}", file=sys.stderr)
        return 1
    finally:
        output.list_files(complete=True)
    print(f"{out_dir}: {len(drawn)} sample(s) of the {args.split} split drawn"
          f"{', ' + str(failed) + ' unreadable' if failed else ''}")
    return 1 if failed or not drawn else 0


if __name__ == "__main__":
    sys.exit(main())
