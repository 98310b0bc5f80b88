"""Infinite training samplers: plain shuffling and LVIS-style repeat-factor sampling.

Both are seeded and shard their stream across distributed ranks, so every rank sees a different
part of the same deterministic sequence.
"""
from __future__ import annotations

import itertools
import math
from typing import Iterator, Sequence

import torch

from ..utils import rank, world_size


def _dist_info() -> tuple[int, int]:
    return rank(), world_size()


class TrainingSampler(torch.utils.data.Sampler):
    """Endless stream of shuffled indices; rank r takes every world_size-th one."""

    def __init__(self, size: int, seed: int = 0, shuffle: bool = True):
        if size <= 0:
            raise ValueError("TrainingSampler needs a non-empty dataset")
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self.rank, self.world_size = _dist_info()

    def _indices(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed)
        while True:
            yield from (torch.randperm(self.size, generator=g) if self.shuffle
                        else torch.arange(self.size)).tolist()

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(self._indices(), self.rank, None, self.world_size)


def repeat_factors(image_labels: Sequence[Sequence[int]], threshold: float) -> torch.Tensor:
    """LVIS repeat factors (Gupta et al. 2019).

    For category c with image frequency f_c: r_c = max(1, sqrt(threshold / f_c)); an image's
    factor is the largest r_c among its categories (1 for images with none).

    Args:
        image_labels: per image, the category labels it contains.
        threshold: frequency below which a category is over-sampled.

    Returns:
        Tensor[N] float32 repeat factors.
    """
    n = len(image_labels)
    counts: dict[int, int] = {}
    for labels in image_labels:
        for c in set(labels):
            counts[c] = counts.get(c, 0) + 1
    r_cat = {c: max(1.0, math.sqrt(threshold / (k / n))) for c, k in counts.items()}
    return torch.tensor([max((r_cat[c] for c in set(labels)), default=1.0)
                         for labels in image_labels], dtype=torch.float32)


class RepeatFactorSampler(TrainingSampler):
    """Images of rare categories repeated ``r_i`` times per epoch (stochastic rounding)."""

    def __init__(self, factors: torch.Tensor, seed: int = 0):
        super().__init__(len(factors), seed)
        self.int_part = torch.floor(factors)
        self.frac_part = factors - self.int_part

    def epoch_indices(self, g: torch.Generator) -> torch.Tensor:
        reps = self.int_part + (torch.rand(len(self.frac_part), generator=g) < self.frac_part).float()
        indices = torch.repeat_interleave(torch.arange(self.size), reps.long())
        return indices[torch.randperm(len(indices), generator=g)]

    def _indices(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed)
        while True:
            yield from self.epoch_indices(g).tolist()
