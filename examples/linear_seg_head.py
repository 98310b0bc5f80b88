"""A head of your own in one file: a linear semantic-segmentation head (a 1x1 conv on one
backbone map, upsampled bilinearly), registered as head type ``linear_seg`` and trained through
detseg's config, Model, Trainer and evaluation like the built-in heads.

    python examples/linear_seg_head.py --iterations 40

What a head type needs: a settings dataclass with a ``type`` field, a ``Head`` subclass that
declares what it reads and returns (``output``, ``needs_features``) and builds itself from its
settings (``from_config``), and one ``register_head`` call. Nothing else in detseg changes: the
model runs it, the evaluator scores it (mIoU, because its ``output`` is ``SEMANTIC``), the API
returns its map.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from dataclasses import dataclass
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from detseg.modeling.heads import SEMANTIC, Head, register_head  # noqa: E402
from detseg.structures import SEMANTIC_IGNORE  # noqa: E402


@dataclass
class LinearSegHeadConfig:
    type: Literal["linear_seg"] = "linear_seg"
    feature: Optional[str] = None  # default: the finest map the backbone returns


class LinearSegHead(Head):
    """Per-pixel class logits ``[B, K + 1, H, W]`` from one feature map: a 1x1 conv, then
    bilinear upsampling to the input size."""

    output = SEMANTIC
    config_class = LinearSegHeadConfig
    built_arguments = ("in_channels", "num_classes")  # from_config makes these; the rest are settings

    def __init__(self, *, in_channels: int, feature: str, num_classes: int):
        super().__init__()
        self.feature = feature
        self.score = nn.Conv2d(in_channels, num_classes + 1, 1)

    @classmethod
    def from_config(cls, settings: LinearSegHeadConfig, backbone: nn.Module, num_classes: int):
        shapes = backbone.output_shape()
        feature = settings.feature or min(shapes, key=lambda n: shapes[n].stride)
        if feature not in shapes:
            raise ValueError(f"linear_seg head: backbone has no {feature!r}; it has {sorted(shapes)}")
        return cls(in_channels=shapes[feature].channels, feature=feature, num_classes=num_classes)

    def forward(self, features: dict, size: tuple[int, int]) -> torch.Tensor:
        return F.interpolate(self.score(features[self.feature]), size=size, mode="bilinear",
                             align_corners=False)

    def forward_train(self, features, batch, **kwargs):
        target = batch.semantic
        logits = self(features, tuple(target.shape[-2:]))
        return {"loss_linear_seg": F.cross_entropy(logits, target.to(logits.device).long(),
                                                   ignore_index=SEMANTIC_IGNORE)}

    def forward_test(self, features, batch, **kwargs):
        return self(features, tuple(batch.images.shape[-2:]))


register_head("linear_seg", LinearSegHead)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iterations", type=int, default=40)
    p.add_argument("--output-dir", help="run folder (default: a temporary one)")
    args = p.parse_args(argv)

    from detseg.config import from_dict
    from detseg.data.build import build_train_loader, resolve_splits
    from detseg.engine.trainer import Trainer, seed_everything
    from detseg.evaluation.runner import build_datasets_and_evaluator
    from detseg.modeling.model import build_model

    cfg = from_dict({
        "model": {"backbone": {"name": "resnet18"},
                  "heads": {"seg": {"type": "linear_seg", "feature": "c3"}}},
        "data": {"shapes": {"num_train": 16, "num_val": 4}, "batch_size": 2, "num_workers": 0},
        "solver": {"max_iter": args.iterations, "warmup_iters": 0, "eval_period": args.iterations,
                   "checkpoint_period": args.iterations, "lr": 0.002, "log_period": 1},
    })
    seed_everything(0, deterministic=False)
    out = args.output_dir or tempfile.mkdtemp(prefix="linear_seg_")
    datasets, evaluate = build_datasets_and_evaluator(cfg, resolve_splits(cfg), out)
    model = build_model(cfg, datasets["train"].num_classes)
    trainer = Trainer(cfg, model, lambda start: build_train_loader(cfg, datasets["train"], start), evaluate,
                      out, {"class_names": datasets["train"].class_names,
                            "label_map": datasets["train"].label_map(),
                            "num_classes": datasets["train"].num_classes})
    metrics = trainer.train()
    print(f"linear_seg head after {args.iterations} iterations: mIoU {metrics['mIoU']:.3f} ({out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
