"""One evaluation callable for whatever heads a model has: mIoU for FCN, COCO AP for detectors."""
from __future__ import annotations

import logging
from typing import Callable, Optional

from .coco import COCOEvaluator, format_per_class
from .semseg import SemSegEvaluator

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
        # One pass over the loader feeds every head's evaluator: the model (and its backbone)
        # runs once per batch however many heads it has.
        semseg = SemSegEvaluator(dataset.num_classes + 1, dataset.class_names) if "fcn" in heads else None
        coco = {name: COCOEvaluator(dataset.ann_file, dataset.cat_ids, dataset.class_names,
                                    iou_types=("bbox", "segm") if cfg.model.mask.enabled and name == "spp"
                                    else ("bbox",),
                                    backend=cfg.evaluator.backend, output_dir=output_dir)
                for name in detectors}
        for batch in loader:
            if not batch["image_ids"]:
                continue
            outputs = model(batch)
            if semseg is not None:
                semseg.process(batch, outputs["fcn"])
            for name, ev in coco.items():
                ev.process(batch, outputs[name])
        metrics: dict = semseg.evaluate() if semseg is not None else {}
        for name, ev in coco.items():
            stats = ev.evaluate()
            for key in [k for k in stats if k.endswith("per_class_AP")]:
                logger.info("%s %s:\n%s", name, key, format_per_class(stats[key]))
            prefix = f"{name}_" if len(detectors) > 1 else ""
            metrics.update({prefix + k: v for k, v in stats.items()})
        return metrics

    return evaluate
