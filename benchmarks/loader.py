"""Training-loader throughput on the shapes dataset (images/s), 0 vs 2 workers.

Measures the full train path a run uses: decode, augment, resize, semantic target, collate.
"""
from __future__ import annotations

import itertools
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import statistics  # noqa: E402

import torch  # noqa: E402

from benchmarks._report import base_parser, finish, markdown_table  # noqa: E402
from detseg.config import load_config  # noqa: E402
from detseg.data import shapes  # noqa: E402
from detseg.data.coco import CocoDataset  # noqa: E402
from detseg.data.samplers import TrainingSampler  # noqa: E402
from detseg.data.transforms import collate, train_transform  # noqa: E402


def throughput(ds, workers: int, batch_size: int, batches: int, rounds: int) -> float:
    """Median images/s over ``rounds`` timed passes of ``batches`` batches (after warm-up)."""
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, sampler=TrainingSampler(len(ds)),
                                         num_workers=workers, collate_fn=collate,
                                         persistent_workers=workers > 0)
    it = iter(loader)
    for _ in range(max(2, workers * 2)):  # warm-up: start workers, fill prefetch queues
        next(it)
    rates = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        n = sum(len(b["image_ids"]) for b in itertools.islice(it, batches))
        rates.append(n / (time.perf_counter() - t0))
    return statistics.median(rates)


def main(argv=None) -> int:
    args = base_parser(__doc__).parse_args(argv)
    batches, rounds = (8, 3) if args.quick else (40, 5)
    with tempfile.TemporaryDirectory() as tmp:
        paths = shapes.generate(os.path.join(tmp, "shapes"), seed=0, num_train=64, num_val=0)
        d = load_config(None).data  # the sizes the default training run uses
        ds = CocoDataset(paths["train"]["ann_file"], paths["train"]["image_dir"], with_semantic=True,
                         transform=train_transform(d.min_size_train, d.max_size))
        rows, figures = [], {}
        for workers in (0, 2):
            rate = throughput(ds, workers, batch_size=4, batches=batches, rounds=rounds)
            figures[f"images_per_s.workers_{workers}"] = rate
            rows.append([workers, f"{rate:.1f}"])
    body = markdown_table(["num_workers", "images/s (median)"], rows)
    body += (f"\n\nShapes train split, batch 4, train augmentation + resize to the default "
             f"config's sizes + semantic target + collate; median of {rounds} passes of "
             f"{batches} batches.")
    finish(args, "loader", "Training loader throughput (shapes)", body, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
