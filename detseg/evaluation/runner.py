"""One evaluation callable for whatever heads a model has: mIoU for FCN, COCO AP for detectors."""
from __future__ import annotations

import logging
from typing import Callable, Optional

from .coco import COCOEvaluator, format_per_class
from .semseg import SemSegEvaluator

logger = logging.getLogger(__name__)


def make_evaluate(cfg, dataset, loader, output_dir: Optional[str]) -> Callable:
    """``model -> metrics`` over ``loader`` for every head in ``cfg.model.heads``.

    Semantic heads add ``mIoU`` / ``pixel_acc``; instance heads add COCO ``AP``, ``AP50`` ...
    (box, and mask for heads with masks), each prefixed with the head's name when the model has
    more than one head of that kind.
    """
    from ..modeling.heads import INSTANCES, SEMANTIC, head_class
    kinds = {name: head_class(settings) for name, settings in cfg.model.heads.items()}
    semantic = [n for n, cls in kinds.items() if cls.output == SEMANTIC]
    detectors = [n for n, cls in kinds.items() if cls.output == INSTANCES]

    def evaluate(model) -> dict:
        # One pass over the loader feeds every head's evaluator: the model (and its backbone)
        # runs once per batch however many heads it has.
        semseg = {name: SemSegEvaluator(dataset.num_classes + 1, dataset.class_names) for name in semantic}
        coco = {name: COCOEvaluator(dataset.ann_file, dataset.cat_ids, dataset.class_names,
                                    iou_types=("bbox", "segm")
                                    if kinds[name].wants_masks(cfg.model.heads[name])
                                    else ("bbox",),
                                    backend=cfg.evaluator.backend, output_dir=output_dir)
                for name in detectors}
        for batch in loader:
            if not batch["image_ids"]:
                continue
            outputs = model(batch)
            for name, ev in semseg.items():
                ev.process(batch, outputs[name])
            for name, ev in coco.items():
                ev.process(batch, outputs[name])
        metrics: dict = {}
        for name, ev in semseg.items():
            prefix = f"{name}_" if len(semantic) > 1 else ""
            metrics.update({prefix + k: v for k, v in ev.evaluate().items()})
        for name, ev in coco.items():
            stats = ev.evaluate()
            for key in [k for k in stats if k.endswith("per_class_AP")]:
                logger.info("%s %s:\n%s", name, key, format_per_class(stats[key]))
            prefix = f"{name}_" if len(detectors) > 1 else ""
            metrics.update({prefix + k: v for k, v in stats.items()})
        return metrics

    return evaluate


def build_datasets_and_evaluator(cfg, splits: dict, output_dir: Optional[str]):
    """What ``tools/train.py`` and ``tools/eval.py`` share: the datasets of ``splits`` (see
    ``detseg.data.build.build_datasets``) and ``evaluate(model) -> metrics`` over the ``"val"``
    one (None without a val split).

    Returns:
        ``(datasets: {split name: CocoDataset}, evaluate or None)``.
    """
    from ..data.build import build_datasets, build_val_loader
    datasets = build_datasets(cfg, splits)
    val = datasets.get("val")
    evaluate = make_evaluate(cfg, val, build_val_loader(cfg, val), output_dir) if val is not None else None
    return datasets, evaluate
