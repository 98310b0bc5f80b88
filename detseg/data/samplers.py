"""Infinite training samplers: plain shuffling, LVIS-style repeat-factor sampling, class-aware
and square-root frequency sampling, and random under-sampling of frequent-class images.

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


class EpochSampler(TrainingSampler):
    """Endless stream of epochs, each the index list ``epoch_indices`` draws anew."""

    def epoch_indices(self, g: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def _indices(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed)
        while True:
            yield from self.epoch_indices(g).tolist()


class RepeatFactorSampler(EpochSampler):
    """Images of rare categories repeated ``r_i`` times per epoch (stochastic rounding)."""

    def __init__(self, factors: torch.Tensor, seed: int = 0):
        super().__init__(len(factors), seed)
        self.int_part = torch.floor(factors)
        self.frac_part = factors - self.int_part

    def epoch_indices(self, g: torch.Generator) -> torch.Tensor:
        reps = self.int_part + (torch.rand(len(self.frac_part), generator=g) < self.frac_part).float()
        indices = torch.repeat_interleave(torch.arange(self.size), reps.long())
        return indices[torch.randperm(len(indices), generator=g)]


def images_per_class(image_labels: Sequence[Sequence[int]]) -> dict[int, list[int]]:
    """Class → the images holding it (each image once per class), in dataset order."""
    out: dict[int, list[int]] = {}
    for i, labels in enumerate(image_labels):
        for c in sorted(set(labels)):
            out.setdefault(c, []).append(i)
    return out


class ClassBalancedSampler(TrainingSampler):
    """Pick a class, then an image holding it: class-aware sampling (Shen et al. 2016, MMDetection's
    ``ClassAwareSampler``) with ``power`` 0, where every class is picked equally often;
    square-root frequency sampling (Mahajan et al. 2018) with ``power`` 0.5, a class picked in
    proportion to the square root of its image count (1 would be plain frequency).

    Each class walks through its images in a fresh random order before repeating any, so a rare
    class shows all its images in turn. Images without labels are never drawn.
    """

    def __init__(self, image_labels: Sequence[Sequence[int]], power: float = 0.0, seed: int = 0):
        super().__init__(len(image_labels), seed)
        self.by_class = images_per_class(image_labels)
        if not self.by_class:
            raise ValueError("class-balanced sampling needs images with labels; none has any")
        self.classes = sorted(self.by_class)
        counts = torch.tensor([len(self.by_class[c]) for c in self.classes], dtype=torch.float64)
        self.class_probs = counts ** power / (counts ** power).sum()

    def _indices(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed)
        queues: dict[int, list[int]] = {}
        while True:
            for k in torch.multinomial(self.class_probs, 4096, replacement=True, generator=g).tolist():
                c = self.classes[k]
                if not queues.get(c):
                    imgs = self.by_class[c]
                    queues[c] = [imgs[j] for j in torch.randperm(len(imgs), generator=g).tolist()]
                yield queues[c].pop()


class UnderSampler(EpochSampler):
    """Random under-sampling: each epoch keeps an image whose every instance belongs to a frequent
    class (held by more than ``frequent`` of the images) with probability ``keep``; all other
    images, those with a rarer class or with no instance, always stay."""

    def __init__(self, image_labels: Sequence[Sequence[int]], frequent: float, keep: float, seed: int = 0):
        super().__init__(len(image_labels), seed)
        n = len(image_labels)
        freq = {c: len(imgs) / n for c, imgs in images_per_class(image_labels).items()}
        self.frequent_classes = {c for c, f in freq.items() if f > frequent}
        self.only_frequent = torch.tensor([bool(labels) and set(labels) <= self.frequent_classes
                                           for labels in image_labels])
        self.keep = keep

    def epoch_indices(self, g: torch.Generator) -> torch.Tensor:
        kept = ~self.only_frequent | (torch.rand(self.size, generator=g) < self.keep)
        indices = torch.nonzero(kept).flatten()
        return indices[torch.randperm(len(indices), generator=g)]
