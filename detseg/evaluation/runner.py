"""One evaluation callable for whatever heads a model has: mIoU for FCN, COCO AP for detectors,
the diagnostics of each (``evaluation.diagnostics``), and the training losses on the val split."""
from __future__ import annotations

import contextlib
import logging
from typing import Callable, Optional

import torch

from .coco import COCOEvaluator, format_per_class
from .frequency import frequency_groups, split_by_frequency
from .panoptic_quality import PanopticEvaluator, format_pq
from .semseg import SemSegEvaluator

logger = logging.getLogger(__name__)


def make_evaluate(cfg, dataset, loader, output_dir: Optional[str],
                  train_images: Optional[dict[str, int]] = None) -> Callable:
    """``model -> metrics`` over ``loader`` for every head in ``cfg.model.heads``.

    With ``train_images`` (class name → training images holding it) every per-class figure is
    also averaged over the rare, common and frequent classes (``cfg.evaluator.frequency_bins``):
    ``APr`` / ``APc`` / ``APf`` (and ``segm_``), ``mIoU_r`` ..., ``accuracy_r`` ...

    Semantic heads add ``mIoU`` / ``pixel_acc``; classify heads ``top1``, ``top5``,
    ``balanced_accuracy``, ``per_class_accuracy``; instance heads add COCO ``AP``, ``AP50`` ...
    (box, and mask for heads with masks), each prefixed with the head's name when the model has
    more than one head of that kind; a panoptic model on a split with panoptic ground truth adds
    ``PQ``, ``SQ``, ``RQ``, their ``_th`` (things) / ``_st`` (stuff) parts and ``per_class_PQ``;
    then ``diagnostics`` (``cfg.evaluator.diagnostics``) and ``val_loss``
    (``cfg.evaluator.val_loss``: the summed training losses, averaged over batches).
    """
    from ..modeling.heads import CLASSES, INSTANCES, SEMANTIC, head_class
    from .classification import ClassificationEvaluator, format_accuracy
    kinds = {name: head_class(settings) for name, settings in cfg.model.heads.items()}
    threshold = cfg.evaluator.score_threshold if cfg.evaluator.diagnostics else None
    semantic = [n for n, cls in kinds.items() if cls.output == SEMANTIC]
    detectors = [n for n, cls in kinds.items() if cls.output == INSTANCES]
    classifiers = [n for n, cls in kinds.items() if cls.output == CLASSES]
    groups = frequency_groups(train_images, cfg.evaluator.frequency_bins) if train_images else None
    # PQ where the model merges a panoptic output and the split has panoptic ground truth
    with_pq = cfg.model.panoptic.enabled and getattr(dataset, "panoptic", None) is not None

    def by_frequency(per_class: dict, name: str) -> dict:
        """``{name.format(g): mean of group g}`` for the rare / common / frequent groups ("r",
        "c", "f") that hold a measured class (nothing without training counts)."""
        if groups is None:
            return {}
        return {name.format(g): v for g, v in split_by_frequency(per_class, groups).items() if v == v}

    def evaluate(model) -> dict:
        # One pass over the loader feeds every head's evaluator: the model (and its backbone)
        # runs once per batch however many heads it has.
        names = getattr(dataset, "semantic_names", None) or ["background", *dataset.class_names]
        semseg = {name: SemSegEvaluator(len(names), names[1:], names[0]) for name in semantic}
        panoptic = PanopticEvaluator(dataset) if with_pq else None
        coco = {name: COCOEvaluator(dataset.ann_file, dataset.cat_ids, dataset.class_names,
                                    iou_types=("bbox", "segm")
                                    if kinds[name].predicts_masks_for(cfg.model.heads[name])
                                    else ("bbox",),
                                    backend=cfg.evaluator.backend, output_dir=output_dir,
                                    diagnostics_threshold=threshold)
                for name in detectors}
        classify = {name: ClassificationEvaluator(dataset.class_names) for name in classifiers}
        loss_sum, loss_batches = torch.zeros(()), torch.zeros(())
        score_losses = cfg.evaluator.val_loss and can_score_losses(model)
        for batch in loader:
            if not batch.image_ids:
                continue
            outputs = model(batch)
            for name, ev in semseg.items():
                ev.process(batch, outputs[name])
            for name, ev in coco.items():
                ev.process(batch, outputs[name])
            for name, ev in classify.items():
                ev.process(batch, outputs[name])
            if panoptic is not None:
                panoptic.process(batch, outputs["panoptic"])
            if score_losses:
                loss_sum += validation_loss(model, batch)
                loss_batches += 1
        metrics: dict = {}
        if loss_batches:
            from .. import comm as dist
            dist.all_reduce_sum(loss_sum)
            dist.all_reduce_sum(loss_batches)
            metrics["val_loss"] = float(loss_sum / loss_batches)
        for name, ev in semseg.items():
            prefix = f"{name}_" if len(semantic) > 1 else ""
            stats = ev.evaluate()
            stats.update(by_frequency(stats["IoU"], "mIoU_{}"))
            if not cfg.evaluator.diagnostics:
                stats.pop("diagnostics", None)
            metrics.update({prefix + k: v for k, v in stats.items()})
        for name, ev in coco.items():
            stats = ev.evaluate()
            for kind in ("", "segm_"):
                if f"{kind}per_class_AP" in stats:
                    stats.update(by_frequency(stats[f"{kind}per_class_AP"], kind + "AP{}"))
                if f"{kind}per_class_recall" in stats:
                    stats.update(by_frequency(stats[f"{kind}per_class_recall"], kind + "recall_{}"))
            for key in [k for k in stats if k.endswith("per_class_AP")]:
                logger.info("%s %s:\n%s", name, key, format_per_class(stats[key]))
            prefix = f"{name}_" if len(detectors) > 1 else ""
            metrics.update({prefix + k: v for k, v in stats.items()})
        if panoptic is not None:
            stats = panoptic.evaluate()
            logger.info("panoptic quality:\n%s", format_pq(stats))
            metrics.update(stats)
        for name, ev in classify.items():
            stats = ev.evaluate()
            stats.update(by_frequency(stats["per_class_accuracy"], "accuracy_{}"))
            logger.info("%s per-class accuracy:\n%s", name, format_accuracy(stats["per_class_accuracy"]))
            if not cfg.evaluator.diagnostics:
                stats.pop("diagnostics", None)
            prefix = f"{name}_" if len(classifiers) > 1 else ""
            metrics.update({prefix + k: v for k, v in stats.items()})
        return metrics

    return evaluate


def can_score_losses(model) -> bool:
    """Whether ``model`` can compute its training losses outside training: not an in-model resize
    (torchvision-style imported detectors resize inside the model at inference only)."""
    return getattr(model, "resize", None) is None


def validation_loss(model, batch) -> torch.Tensor:
    """The model's summed training loss on ``batch``, as a number, without changing anything:
    no gradients, normalisation and dropout in inference mode (running statistics untouched),
    and the random draws of proposal sampling taken from a forked generator, so that a run
    with validation losses trains exactly as one without."""
    norms = [m for m in model.modules()
             if isinstance(m, (torch.nn.modules.batchnorm._BatchNorm, torch.nn.Dropout, torch.nn.Dropout2d))]
    devices = [model.device] if getattr(model, "device", torch.device("cpu")).type == "cuda" else []
    with torch.no_grad(), torch.random.fork_rng(devices=devices), _training_mode(model, norms):
        return model(batch)["loss"].detach().float().cpu()


@contextlib.contextmanager
def _training_mode(model, held):
    was = model.training
    model.train()
    for m in held:
        m.eval()
    try:
        yield
    finally:
        model.train(was)


def training_counts(cfg, split: Optional[dict]) -> Optional[dict[str, int]]:
    """Class name -> training images holding it, read from the train ``split``'s annotations (or
    class folders) without building the training set; None when there is no split or it cannot
    be read (the frequency split is then left out, not the evaluation)."""
    from ..data.build import build_classification_dataset
    from ..data.coco import CocoDataset
    from ..data.io import DataError
    from ..modeling.model import data_needs
    if not split:
        return None
    try:
        if data_needs(cfg).classify:
            ds = build_classification_dataset(cfg, split, train=False)
        else:
            ds = CocoDataset(split["ann_file"], split["image_dir"])
    except (DataError, OSError, ValueError) as e:
        logger.info("no rare / common / frequent split: the training data cannot be read (%s)", e)
        return None
    return dict(zip(ds.class_names, ds.class_counts()))


def build_datasets_and_evaluator(cfg, splits: dict, output_dir: Optional[str], class_names=None,
                                 train_split: Optional[dict] = None):
    """What ``tools/train.py`` and ``tools/eval.py`` share: the datasets of ``splits`` (see
    ``detseg.data.build.build_datasets``; ``class_names``: a trained model's, for a
    classification val folder) and ``evaluate(model) -> metrics`` over the ``"val"``
    one (None without a val split). ``train_split``: where the training counts of the
    rare / common / frequent split come from when ``splits`` holds no train split (an
    evaluation of a trained model).

    Returns:
        ``(datasets: {split name: CocoDataset}, evaluate or None)``.
    """
    from ..data.build import build_datasets, build_val_loader
    datasets = build_datasets(cfg, splits, class_names)
    val, train = datasets.get("val"), datasets.get("train")
    train_images = (dict(zip(train.class_names, train.class_counts())) if train is not None
                    else training_counts(cfg, train_split))
    evaluate = (make_evaluate(cfg, val, build_val_loader(cfg, val), output_dir, train_images)
                if val is not None else None)
    return datasets, evaluate
