"""Datasets and loaders from a config, with deterministic per-sample augmentation.

The training stream is a sequence of (dataset index, stream position) pairs from a seeded
infinite sampler. Each sample's augmentation is seeded by its stream position, so what a sample
looks like depends only on the seed and where it falls in the stream: not on worker count, and
not on whether the run was stopped and resumed.
"""
from __future__ import annotations

import dataclasses
import itertools
import logging
from typing import Iterator, Optional

import torch

from .coco import CocoDataset
from .io import DataError
from .samplers import ClassBalancedSampler, RepeatFactorSampler, TrainingSampler, UnderSampler, repeat_factors
from .shapes import ensure_shapes
from .transforms import PAD_DIVISOR, collate, eval_transform, train_transform

logger = logging.getLogger(__name__)


def resolve_splits(cfg) -> dict:
    """{"train": {"ann_file", "image_dir"}, "val": {...} or None}; shapes when nothing is set.

    For a classification model (a ``classify`` head) a split with ``image_dir`` and no
    ``ann_file`` is a folder per class, one with an ``ann_file`` is cut into object crops, and
    with neither set the built-in set of ``data.classify.builtin`` is written to the cache."""
    from ..modeling.model import data_needs
    d = cfg.data
    if data_needs(cfg).classify:
        return _classify_splits(cfg)
    if d.train.ann_file is None:
        s = d.shapes
        ensure = ensure_shapes
        if s.panoptic:
            from .shapes_panoptic import ensure_panoptic_shapes as ensure
        try:
            splits = ensure(s.seed, s.num_train, s.num_val, s.cache_dir, s.classes, s.imbalance)
        except ValueError as e:  # an unknown shape name
            raise DataError(f"data.shapes.classes: {e}") from None
        return splits if s.num_val else {**splits, "val": None}
    splits = {"train": _split(d.train), "val": None}
    if d.val.ann_file:
        splits["val"] = _split(d.val)
    return splits


def _split(split) -> dict:
    """A ``data.train`` / ``data.val`` section as a split dict (``panoptic_json`` / ``panoptic_dir``
    only when a panoptic file is set)."""
    out = {"ann_file": split.ann_file, "image_dir": split.image_dir}
    if split.panoptic_file:
        from .panoptic_format import panoptic_paths
        out.update(panoptic_paths(split.panoptic_file, split.panoptic_dir))
    return out


def _classify_splits(cfg) -> dict:
    d = cfg.data
    if d.train.ann_file is None and d.train.image_dir is None:
        c, s = d.classify, d.shapes
        if c.builtin == "digits":
            from .digits import ensure_digits
            splits = ensure_digits(s.cache_dir)
        else:
            from .shapes import ensure_shapes_classes
            try:
                splits = ensure_shapes_classes(s.seed, s.num_train, s.num_val, s.cache_dir, s.classes,
                                               c.shapes_size, s.imbalance)
            except ValueError as e:  # an unknown shape name
                raise DataError(f"data.shapes.classes: {e}") from None
        return splits if s.num_val or c.builtin == "digits" else {**splits, "val": None}
    splits = {"train": {"ann_file": d.train.ann_file, "image_dir": d.train.image_dir}, "val": None}
    if d.val.ann_file or d.val.image_dir:
        splits["val"] = {"ann_file": d.val.ann_file, "image_dir": d.val.image_dir}
    for name, split in splits.items():
        if split is not None and split["image_dir"] is None:
            raise DataError(f"data.{name}.image_dir: not set (the folder of images"
                            f"{' the annotations refer to' if split['ann_file'] else ', one sub-folder per class'})")
    return splits


def build_classification_dataset(cfg, split: dict, *, train: bool, class_names=None):
    """A ``ClassificationDataset`` of one split (see ``resolve_splits``); ``class_names``: the
    train split's, for a val folder."""
    from .classification import ClassificationDataset, ClassifyTransform, coco_crops, scan_folder
    d, c = cfg.data, cfg.data.classify
    if c.size % PAD_DIVISOR:
        raise DataError(f"data.classify.size: {c.size} is not a multiple of {PAD_DIVISOR} (batches are "
                        f"padded to multiples of {PAD_DIVISOR}; padding would enter the classifier's pooling)")
    transform = ClassifyTransform(c.size, train=train, augment=d.augment, crop_ratio=c.crop_ratio,
                                  min_scale=c.min_scale, flip=c.flip)
    if split["ann_file"]:
        items, names, cat_ids = coco_crops(split["ann_file"], split["image_dir"], c.crop_context)
        source = split["ann_file"]
        if class_names is not None and list(class_names) != names:
            raise DataError(f"{source}: categories {', '.join(names[:8])} are not the training data's "
                            f"({', '.join(list(class_names)[:8])}); labels would mean other classes")
    else:
        items, names, counts = scan_folder(split["image_dir"], class_names)
        cat_ids, source = None, split["image_dir"]
        missing = [n for n, k in counts.items() if not k] + [n for n in names if n not in counts]
        if missing:
            logger.warning("%s: no images of %d class(es): %s", source, len(missing), ", ".join(missing[:5]))
    return ClassificationDataset(items, names, source=source, cat_ids=cat_ids, ann_file=split["ann_file"],
                                 transform=transform, on_bad_image=d.on_bad_image, cache=d.cache)


def inference_transform(cfg):
    """The pipeline an image goes through at test time (predictors, export): the classification
    resize and centre crop, the detection resize, or None where the model resizes itself."""
    from ..modeling.model import data_needs
    if data_needs(cfg).classify:
        from .classification import ClassifyTransform
        c = cfg.data.classify
        return ClassifyTransform(c.size, train=False, crop_ratio=c.crop_ratio)
    if cfg.model.input_resize == "model":
        return None
    return eval_transform(cfg.data.min_size_test, cfg.data.max_size)


def panoptic_source(cfg, split: dict) -> Optional[tuple[str, Optional[str]]]:
    """``CocoDataset``'s ``panoptic`` argument for ``split``: its panoptic JSON and PNG folder when
    the model merges panoptic output and the split has panoptic ground truth, else None."""
    if cfg.model.panoptic.enabled and split.get("panoptic_json"):
        return split["panoptic_json"], split.get("panoptic_dir")
    return None


def build_dataset(cfg, split: dict, *, train: bool, with_masks=False, with_semantic=False,
                  proposals: Optional[dict] = None) -> CocoDataset:
    d = cfg.data
    transform = (train_transform(d.min_size_train, d.max_size, d.augment) if train
                 else eval_transform(d.min_size_test, d.max_size))
    if not train and cfg.model.input_resize == "model":
        transform = None  # the model resizes (see ModelConfig.input_resize)
    return CocoDataset(split["ann_file"], split["image_dir"], with_masks=with_masks,
                       with_semantic=with_semantic, keep_empty=d.keep_empty or not train,
                       transform=transform, on_bad_image=d.on_bad_image, proposals=proposals,
                       cache=d.cache, panoptic=panoptic_source(cfg, split),
                       copy_paste=dataclasses.asdict(d.copy_paste) if train else None)


def build_datasets(cfg, splits: dict, class_names=None) -> dict:
    """``{split name: CocoDataset}`` for each split of ``splits`` that is set ("train" built for
    training, any other for evaluation), with what the config's heads need: semantic maps,
    instance masks, selective-search proposals (caches computed once and reused). Classification:
    the val folder's labels follow the train split's classes, or ``class_names`` (a trained
    model's) without a train split."""
    from ..modeling.model import data_needs
    needs = data_needs(cfg)
    if needs.classify:
        train = build_classification_dataset(cfg, splits["train"], train=True) if splits.get("train") else None
        names = train.class_names if train is not None else class_names
        out = {"train": train} if train is not None else {}
        out.update({name: build_classification_dataset(cfg, split, train=False, class_names=names)
                    for name, split in splits.items() if split is not None and name != "train"})
        return out
    proposals = load_proposals(needs.proposals, splits, cfg.data.num_workers)
    return {name: build_dataset(cfg, split, train=name == "train", with_semantic=needs.semantic,
                                with_masks=needs.masks, proposals=proposals.get(name))
            for name, split in splits.items() if split is not None}


def load_proposals(p, splits: dict, workers: int = 0) -> dict:
    """{split: {image_id: boxes}} for the selective-search settings ``p`` (``data_needs(cfg)
    .proposals``; None: no head reads them, so ``{}``); the caches are computed once
    (tools/proposals.py does the same on its own) and reused afterwards."""
    from . import proposal_cache as ss

    if p is None:
        return {}
    out = {}
    for name, path in (("train", p.train_file), ("val", p.val_file)):
        split = splits.get(name)
        if split is None:
            continue
        path = ss.ensure_cache(split["ann_file"], split["image_dir"], path, p.mode, p.max_per_image,
                               workers=workers)
        out[name] = ss.load_cache(path)
    return out


class SeededStream(torch.utils.data.Dataset):
    """Wraps a dataset; item ``(index, position)`` reseeds the transform from the position."""

    def __init__(self, dataset: CocoDataset, seed: int, rank: int = 0, world_size: int = 1):
        self.dataset = dataset
        self.seed = seed
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item):
        index, position = item
        global_position = position * self.world_size + self.rank
        seed = (self.seed * 1_000_003 + global_position) % (2**31)
        if hasattr(self.dataset.transform, "reseed"):
            self.dataset.transform.reseed(seed)
        if getattr(self.dataset, "copy_paste", None) is not None:
            self.dataset.copy_paste.reseed(seed + 7919)  # its own stream, not the transform's
        return self.dataset[index]


class PositionedSampler(torch.utils.data.Sampler):
    """Yields ``(index, position)`` from ``start`` on; position counts this rank's stream."""

    def __init__(self, sampler: TrainingSampler, start: int = 0):
        self.sampler = sampler
        self.start = start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        stream = itertools.islice(iter(self.sampler), self.start, None)
        return ((idx, pos) for pos, idx in enumerate(stream, self.start))


def build_train_sampler(d, dataset, seed: int) -> TrainingSampler:
    """The endless sampler ``data.sampler`` names, over ``dataset``'s per-image labels."""
    if d.sampler == "random":
        return TrainingSampler(len(dataset), seed=seed)
    labels = dataset.image_labels()
    if d.sampler == "repeat_factor":
        return RepeatFactorSampler(repeat_factors(labels, d.repeat_threshold), seed=seed)
    if d.sampler in ("class_aware", "sqrt_frequency"):
        return ClassBalancedSampler(labels, power=0.0 if d.sampler == "class_aware" else 0.5, seed=seed)
    return UnderSampler(labels, d.undersample_frequent, d.undersample_keep, seed=seed)


def build_train_loader(cfg, dataset: CocoDataset, start_iter: int = 0) -> torch.utils.data.DataLoader:
    """Infinite loader continuing at iteration ``start_iter`` (for exact resume)."""
    d = cfg.data
    base = build_train_sampler(d, dataset, cfg.runtime.seed)
    sampler = PositionedSampler(base, start_iter * d.batch_size)
    return torch.utils.data.DataLoader(
        SeededStream(dataset, cfg.runtime.seed, base.rank, base.world_size), batch_size=d.batch_size,
        sampler=sampler,
        num_workers=d.num_workers, collate_fn=collate, persistent_workers=d.num_workers > 0,
        worker_init_fn=_worker_init,
        # Its own generator: starting an iterator must not draw from the global RNG, or a
        # resumed run's dropout would see a different random stream than a straight one.
        generator=torch.Generator().manual_seed(cfg.runtime.seed))


class ShardSampler(torch.utils.data.Sampler):
    """Every world_size-th index from this rank's: each image evaluated once across ranks."""

    def __init__(self, size: int):
        from .samplers import _dist_info
        self.rank, self.world_size = _dist_info()
        self.size = size

    def __iter__(self):
        return iter(range(self.rank, self.size, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.size, self.world_size))


def build_val_loader(cfg, dataset: CocoDataset, batch_size: Optional[int] = None):
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size or cfg.data.batch_size,
                                       sampler=ShardSampler(len(dataset)),
                                       num_workers=cfg.data.num_workers,
                                       collate_fn=collate, worker_init_fn=_worker_init)


def _worker_init(worker_id: int) -> None:
    # Workers each take one core's share; OpenCV's own thread pool would oversubscribe.
    import cv2
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
