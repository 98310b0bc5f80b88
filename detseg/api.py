"""Load a trained checkpoint and call it on images: the entry point for your own code.

    from detseg import load_model
    predictor = load_model("runs/x/best.pth")          # config, classes, label map from the file
    out = predictor(image)                              # np.ndarray [H, W, 3] RGB uint8, or a path
    out["instances"]   # Instances in the image's own pixels (boxes, scores, labels, masks [N, H, W])
    out["semantic"]    # Tensor[H, W] uint8: 0 background, k + 1 class k (models with an FCN head)
    out["panoptic"]    # (Tensor[H, W] int32 segment ids, [segment dicts]) (panoptic models)
    out["classes"]     # Tensor[K] class probabilities (classification models)
    predictor.top_k(out["classes"], 5)   # [(class name, probability)], best first
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from .config import Config, ConfigError, from_dict, load_config
from .engine.checkpoint import CheckpointError, fit_report, load_checkpoint
from .utils import UsageError, check_device
from .modeling.heads import CLASSES, SEMANTIC
from .modeling.heads.base import RESULT_KEYS
from .modeling.heads.fcn import labels_at
from .modeling.panoptic import name_segments
from .data.prepare import ImageLike, prepare_image  # noqa: F401  (prepare_image: public here too)
from .structures import Instances

def top_k(scores: torch.Tensor, class_names, k: int = 5) -> list[tuple[str, float]]:
    """``[(class name, probability)]`` of the ``k`` largest of ``scores`` ``Tensor[K]``, best first."""
    values, idx = scores.float().topk(min(k, scores.numel()))
    return [(class_names[int(i)], float(v)) for v, i in zip(values, idx)]


class Predictor:
    """A model in eval mode with its preprocessing and its classes.

    Args:
        model: a ``Model``; cfg: its ``Config``; class_names, cat_ids: label ``k`` is
        ``class_names[k]`` with dataset category id ``cat_ids[k]``.
        device: where to run; score_threshold: instances below it are dropped; half: fp16
        autocast (CUDA only).
        channels_last: channels-last convolutions (default: as trained, ``solver.channels_last``).
        fold_bn: fold frozen BatchNorm into the convolutions before it (faster; results change
            by float rounding only). ``channels_last=False, fold_bn=False`` runs exactly the
            arithmetic of torchvision's models, for imported weights.
        stuff_names, stuff_cat_ids: a panoptic model's stuff classes (its semantic head's
            classes 1.. when trained on panoptic data), which its stuff segments name.
    """

    def __init__(self, model, cfg: Config, class_names: Sequence[str], cat_ids: Sequence[int], *,
                 device: str = "cpu", score_threshold: float = 0.0, half: bool = False,
                 channels_last: Optional[bool] = None, fold_bn: bool = True,
                 stuff_names: Optional[Sequence[str]] = None, stuff_cat_ids: Optional[Sequence[int]] = None):
        from .data.build import inference_transform
        self.cfg, self.class_names, self.cat_ids = cfg, list(class_names), list(cat_ids)
        self.stuff_names = list(stuff_names) if stuff_names else None
        self.stuff_cat_ids = list(stuff_cat_ids) if stuff_cat_ids else None
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        if fold_bn:
            from .modeling.backbones import fold_frozen_batchnorm
            fold_frozen_batchnorm(self.model)
        if cfg.solver.channels_last if channels_last is None else channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.score_threshold = score_threshold
        self.half = half and self.device.type == "cuda"
        self.transform = inference_transform(cfg)  # None: the model resizes

    @torch.no_grad()
    def predict_batch(self, images: Sequence[ImageLike], proposals: Optional[Sequence] = None) -> list[dict]:
        """One result dict per image (see ``__call__``); ``proposals``: per image ``[P, 4]`` boxes
        in its file's pixels, for heads that read selective-search proposals (default: computed)."""
        from .data.transforms import collate
        from .evaluation.coco import to_file_pixels
        given = [None] * len(images) if proposals is None else list(proposals)
        batch = collate([prepare_image(im, self.transform, i, p)
                         for i, (im, p) in enumerate(zip(images, given))])
        with torch.autocast("cuda", dtype=torch.float16, enabled=self.half):
            out = self.model(batch)
        results = [{"heads": {}} for _ in images]
        for name, pred in out.items():
            kind = "panoptic" if name == "panoptic" else self.model.heads[name].output
            for i, ((h, w), (oh, ow)) in enumerate(zip(batch.image_sizes, batch.orig_sizes)):
                if kind == SEMANTIC:
                    value = labels_at(pred[i, :, :h, :w], (oh, ow)).cpu()
                elif kind == CLASSES:
                    value = pred[i].float().cpu()
                elif kind == "panoptic":  # merged at the file's size already
                    seg, segments = pred[i]
                    results[i]["panoptic"] = (seg.cpu(), name_segments(
                        segments, self.class_names, self.cat_ids, self.stuff_names, self.stuff_cat_ids))
                    continue
                else:
                    inst = pred[i]
                    inst = inst[inst.scores >= self.score_threshold]
                    value = to_file_pixels(inst, inst.image_size, (oh, ow)).to("cpu")
                results[i]["heads"][name] = value
                # the first head of each kind also answers under the kind's own key
                results[i].setdefault(RESULT_KEYS[kind], value)
        return results

    def top_k(self, scores: torch.Tensor, k: int = 5) -> list[tuple[str, float]]:
        """The ``k`` most likely classes of a ``Tensor[K]`` of class probabilities (a result's
        ``"classes"``): ``[(class name, probability)]``, best first."""
        return top_k(scores, self.class_names, k)

    def __call__(self, image: ImageLike, proposals=None) -> dict:
        """Run on one image (``np.ndarray [H, W, 3]`` RGB uint8, a ``[3, H, W]`` uint8 tensor, or a
        file path); ``proposals`` as in ``predict_batch``.

        Returns:
            {"instances": ``Instances`` in the image's pixels (masks ``[N, H, W]`` bool when the
            head predicts masks)} from the first instance head, {"semantic": ``Tensor[H, W]``
            uint8} from the first semantic head, {"classes": ``Tensor[K]`` probabilities} from
            the first classify head, {"panoptic": (``Tensor[H, W]`` int32 segment
            ids in the image's pixels, segments: dicts with ``id``, ``label``, ``isthing``,
            ``score``, ``area``, ``category_id``, ``name``)} for panoptic models, and {"heads":
            {head name: its instances or map}}.
        """
        return self.predict_batch([image], None if proposals is None else [proposals])[0]


def load_model(weights: str, *, config: Optional[str] = None, device: str = "auto",
               score_threshold: float = 0.0, half: bool = False, channels_last: Optional[bool] = None,
               fold_bn: bool = True) -> Predictor:
    """Build the model a checkpoint describes and load its weights.

    Args:
        weights: a detseg checkpoint (``best.pth``, ``model_*.pth`` or a converted one), or a
            file exported by ``tools/export.py`` (``.onnx``, ``.pt2``): then the result is a
            ``detseg.export.runtime.ExportedPredictor`` with the same calls and results.
        config: optionally a config file that replaces the checkpoint's own (architecture
            changes then fail with a clear mismatch report).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``.
        channels_last, fold_bn: see ``Predictor``.

    Raises:
        CheckpointError: the file is not a detseg checkpoint or does not fit the architecture.
        UsageError: a device this machine does not have, a score threshold outside [0, 1].
    """
    from .export.format import is_exported
    from .export.runtime import load_exported
    if is_exported(weights) and device == "auto":
        device = "cpu"  # ONNX Runtime's CPU provider is the one every install has
    device = check_device(device)  # before minutes of model building, not after
    if not 0.0 <= score_threshold <= 1.0:  # also refuses NaN
        raise UsageError(f"score threshold must be in [0, 1], got {score_threshold}")
    if is_exported(weights):
        return load_exported(weights, device=device, score_threshold=score_threshold, config=config)
    from .modeling.model import build_model
    state = load_checkpoint(weights)
    if "model" not in state:
        raise CheckpointError(f"{weights}: no 'model' weights in this file; is it a detseg checkpoint?")
    if config is not None:
        cfg = load_config(config)
    elif isinstance(state.get("config"), dict):
        try:
            cfg = from_dict(state["config"])
        except ConfigError as e:
            raise CheckpointError(f"{weights}: its config does not fit this detseg version: {e}") from None
    else:
        raise CheckpointError(f"{weights}: holds no config; pass --config with the architecture it was "
                              f"trained with (or convert it with the tool that made it)")
    names = state.get("class_names") or (state.get("label_map") or {}).get("class_names")
    if not names:
        raise CheckpointError(f"{weights}: holds no class names")
    label_map = state.get("label_map") or {}
    cat_ids = label_map.get("cat_ids") or list(range(1, len(names) + 1))
    stuff_names = label_map.get("stuff_names")
    cfg.model.backbone.weights = None  # the checkpoint carries every weight; download nothing
    model = build_model(cfg, len(names), len(stuff_names) if stuff_names else None)
    problem = fit_report(model, state["model"])
    if problem:
        raise CheckpointError(f"{weights} does not fit the model its config describes "
                              f"({cfg.model.backbone.name}, heads "
                              f"{ {n: h.type for n, h in cfg.model.heads.items()} }): {problem}")
    model.load_state_dict(state["model"])
    return Predictor(model, cfg, names, cat_ids, device=device, score_threshold=score_threshold, half=half,
                     channels_last=channels_last, fold_bn=fold_bn, stuff_names=stuff_names,
                     stuff_cat_ids=label_map.get("stuff_cat_ids"))


__all__ = ["Instances", "Predictor", "load_model", "fit_report", "top_k"]
