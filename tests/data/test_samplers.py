import itertools
from collections import Counter

import pytest

from detseg.data.samplers import RepeatFactorSampler, TrainingSampler, repeat_factors


def test_repeat_factors_follow_lvis_formula():
    # Category 0 in all 100 images, category 1 in one image only.
    labels = [[0] for _ in range(99)] + [[0, 1]]
    f = repeat_factors(labels, threshold=0.1)
    assert f[0] == 1.0
    assert f[99] == pytest.approx((0.1 / 0.01) ** 0.5)


def test_repeat_factor_sampler_oversamples_rare_images():
    labels = [[0] for _ in range(99)] + [[1]]
    sampler = RepeatFactorSampler(repeat_factors(labels, threshold=0.25), seed=0)
    counts = Counter(itertools.islice(iter(sampler), 20000))
    # The rare image repeats sqrt(0.25 / 0.01) = 5 times per epoch, the others once.
    assert counts[99] / (sum(counts[i] for i in range(99)) / 99) == pytest.approx(5.0, rel=0.1)


def test_training_sampler_is_seeded_and_covers_each_epoch():
    a = list(itertools.islice(iter(TrainingSampler(10, seed=1)), 20))
    b = list(itertools.islice(iter(TrainingSampler(10, seed=1)), 20))
    c = list(itertools.islice(iter(TrainingSampler(10, seed=2)), 20))
    assert a == b and a != c
    assert sorted(a[:10]) == list(range(10)) and sorted(a[10:]) == list(range(10))
    with pytest.raises(ValueError):
        TrainingSampler(0)
