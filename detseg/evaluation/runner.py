"""One evaluation callable for whatever heads a model has: mIoU for FCN, COCO AP for detectors."""
from __future__ import annotations

import logging
from typing import Callable, Optional

from .coco import COCOEvaluator, evaluate_detection, format_per_class
from .semseg import evaluate_semseg

logger = logging.getLogger(__name__)


def make_evaluate(cfg, dataset, loader, output_dir: Optional[str]) -> Callable:
    """``model -> metrics`` over ``loader`` for every head in ``cfg.model.heads``.

    Semantic heads add ``mIoU`` / ``pixel_acc``; detection heads add COCO ``AP``, ``AP50`` ...
    (prefixed with the head's name when a model has more than one detection head).
    """
    from ..modeling.model import DETECTION_HEADS
    heads = list(cfg.model.heads)
    detectors = [h for h in heads if h in DETECTION_HEADS]

    def evaluate(model) -> dict:
        metrics: dict = {}
        if "fcn" in heads:
            metrics.update(evaluate_semseg(model, loader, class_names=dataset.class_names))
        for name in detectors:
            iou_types = ("bbox", "segm") if cfg.model.mask.enabled and name == "spp" else ("bbox",)
            ev = COCOEvaluator(dataset.ann_file, dataset.cat_ids, dataset.class_names,
                               iou_types=iou_types, backend=cfg.evaluator.backend, output_dir=output_dir)
            stats = evaluate_detection(model, loader, ev, name)
            for key in [k for k in stats if k.endswith("per_class_AP")]:
                logger.info("%s %s:\n%s", name, key, format_per_class(stats[key]))
            prefix = f"{name}_" if len(detectors) > 1 else ""
            metrics.update({prefix + k: v for k, v in stats.items()})
        return metrics

    return evaluate
