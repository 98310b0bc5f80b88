import itertools
from collections import Counter

import pytest
import torch

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


def long_tail_labels():
    """Class 0 in 90 images, class 1 in 9, class 2 in 1; one image with class 0 and 2; two empty."""
    return [[0]] * 89 + [[0, 2]] + [[1, 1]] * 9 + [[], []]


def class_picks(sampler, labels, n):
    """How often each class's images are drawn (an image counts for each class it holds)."""
    counts = Counter()
    for i in itertools.islice(iter(sampler), n):
        assert labels[i], "an image without labels was drawn"
        counts.update(set(labels[i]))
    return counts


def test_class_aware_sampler_draws_every_class_alike():
    from detseg.data.samplers import ClassBalancedSampler
    labels = long_tail_labels()
    counts = class_picks(ClassBalancedSampler(labels, power=0.0, seed=0), labels, 9000)
    # each class picked a third of the time; image 89 also carries class 0 when class 2 picks it
    assert counts[1] / 9000 == pytest.approx(1 / 3, abs=0.03) and counts[2] / 9000 == pytest.approx(1 / 3, abs=0.03)
    a = list(itertools.islice(iter(ClassBalancedSampler(labels, seed=4)), 50))
    assert a == list(itertools.islice(iter(ClassBalancedSampler(labels, seed=4)), 50))


def test_sqrt_frequency_sampler_picks_classes_by_the_root_of_their_image_counts():
    from detseg.data.samplers import ClassBalancedSampler
    labels = long_tail_labels()
    sampler = ClassBalancedSampler(labels, power=0.5, seed=1)
    roots = [90 ** 0.5, 9 ** 0.5, 1.0]
    assert sampler.class_probs.tolist() == pytest.approx([r / sum(roots) for r in roots])
    counts = class_picks(sampler, labels, 20000)
    assert counts[1] / 20000 == pytest.approx(roots[1] / sum(roots), abs=0.02)
    # within a class, every image in turn before any repeats
    first = [i for i in itertools.islice(iter(ClassBalancedSampler([[0]] * 5 + [[1]] * 5, power=0.0, seed=2)), 40)
             if i < 5][:5]
    assert sorted(first) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="none has any"):
        ClassBalancedSampler([[], []])


def test_under_sampler_thins_images_of_frequent_classes_only():
    from detseg.data.samplers import UnderSampler
    labels = long_tail_labels()
    sampler = UnderSampler(labels, frequent=0.5, keep=0.25, seed=0)
    assert sampler.frequent_classes == {0}
    epochs = [sampler.epoch_indices(torch.Generator().manual_seed(s)) for s in range(40)]
    only_zero = sum(sum(1 for i in e.tolist() if i < 89) for e in epochs) / 40
    assert only_zero == pytest.approx(89 * 0.25, rel=0.15)
    for e in epochs:  # the rest, the mixed image and the empty ones included, every epoch
        assert set(range(89, 101)) <= set(e.tolist()) and len(set(e.tolist())) == len(e)


def test_data_sampler_setting_builds_each_sampler():
    from detseg.config import load_config
    from detseg.data.build import build_train_sampler
    from detseg.data.samplers import ClassBalancedSampler, RepeatFactorSampler, UnderSampler

    class Labelled:
        def __init__(self, labels):
            self.labels = labels

        def __len__(self):
            return len(self.labels)

        def image_labels(self):
            return self.labels

    ds = Labelled(long_tail_labels())
    kinds = {"random": TrainingSampler, "repeat_factor": RepeatFactorSampler, "class_aware": ClassBalancedSampler,
             "sqrt_frequency": ClassBalancedSampler, "undersample": UnderSampler}
    for name, cls in kinds.items():
        cfg = load_config(None, [f"data.sampler={name}"])
        assert type(build_train_sampler(cfg.data, ds, 0)) is cls
    assert build_train_sampler(load_config(None, ["data.sampler=sqrt_frequency"]).data, ds, 0).class_probs[2] > 0.05
