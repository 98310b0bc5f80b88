"""Metrics split by how often each class was seen in training, as LVIS reports AP: rare, common
and frequent classes (APr / APc / APf), so that a long tail's rare classes are not averaged away
by the frequent ones. The split applies to any per-class figure: box and mask AP, FCN's IoU,
the classifier's per-class accuracy.
"""
from __future__ import annotations

import math

GROUPS = ("r", "c", "f")


def frequency_groups(train_images: dict[str, int], bins: list[int]) -> dict[str, str]:
    """Class name → "r" (held by at most ``bins[0]`` training images), "c" (at most ``bins[1]``)
    or "f" (more); LVIS's bins are 10 and 100."""
    rare, common = bins
    return {name: "r" if n <= rare else "c" if n <= common else "f" for name, n in train_images.items()}


def split_by_frequency(per_class: dict[str, float], groups: dict[str, str]) -> dict[str, float]:
    """The mean of ``per_class`` over each group's classes (NaN entries, classes never seen in
    val, left out); a group without a class measured gets NaN."""
    out = {}
    for g in GROUPS:
        values = [v for name, v in per_class.items()
                  if groups.get(name) == g and v is not None and not math.isnan(v)]
        out[g] = sum(values) / len(values) if values else float("nan")
    return out
