"""Run an exported model (``.onnx`` through ONNX Runtime, ``.pt2`` through ``torch.export``) with
the same calls and results as ``detseg.Predictor``.

    from detseg import load_model
    predictor = load_model("model.onnx")     # ExportedPredictor; load_model("best.pth") is eager
    out = predictor("photo.jpg")              # {"instances": ..., "semantic": ..., "heads": {...}}

What the graph leaves outside (``detseg.export``) happens here exactly as the eager predictor
does it: the data pipeline's resize, selective search for heads that read proposals, pasting the
28 x 28 masks into the image, and the score threshold.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Optional, Sequence

import torch

from ..engine.checkpoint import CheckpointError
from .format import read_metadata
from ..modeling.heads.base import RESULT_KEYS
from ..structures import Instances
from ..utils import UsageError, quiet_loggers

class _OnnxRunner:
    def __init__(self, path: str, device: torch.device):
        try:
            import onnxruntime as ort
        except ImportError:
            raise UsageError("running .onnx files needs ONNX Runtime: pip install -e \".[export]\"") from None
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda":
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
        try:
            self.session = ort.InferenceSession(path, providers=providers)
        except Exception as e:  # ORT raises its own exception types for unreadable files
            raise CheckpointError(f"{path}: ONNX Runtime cannot load it: {str(e).splitlines()[0]}") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        self.raw = {k[len("detseg."):]: v for k, v in meta.items() if k.startswith("detseg.")}
        self.names = [i.name for i in self.session.get_inputs()]

    def __call__(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        feed = {n: t.numpy() for n, t in zip(self.names, inputs)}
        return [torch.from_numpy(a) for a in self.session.run(None, feed)]


class _Pt2Runner:
    def __init__(self, path: str, device: torch.device, compile: bool = False):
        from .. import ops  # noqa: F401  the graph calls detseg's ops: register them first
        extra = {"detseg.json": ""}
        try:
            # torch logs a traceback of its own before raising; the one line below says it
            with quiet_loggers("torch", "torch.export", "torch._export", level=logging.CRITICAL):
                program = torch.export.load(path, extra_files=extra)
        except Exception as e:  # a truncated or foreign archive
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            if "warnings above" in first:  # the warnings it points to are the silenced traceback
                first = "a corrupt archive, or not one torch.export wrote"
            raise CheckpointError(f"{path}: torch.export cannot load it: {first}") from None
        try:
            self.raw = {k: json.dumps(v) for k, v in json.loads(extra["detseg.json"] or "{}").items()}
        except ValueError:
            self.raw = {}
        self.module = program.module()
        if compile:  # inductor, shapes dynamic from the start (the export's own dimensions)
            self.module = torch.compile(self.module, dynamic=True)
        self.device = device

    def __call__(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        with torch.no_grad():
            out = self.module(*[t.to(self.device) if t.is_floating_point() or t.dtype == torch.uint8 else t
                                for t in inputs])
        return [t.cpu() for t in out]


class ExportedPredictor:
    """An exported file with ``Predictor``'s interface (``__call__``, ``predict_batch``,
    ``class_names``, ``cat_ids``).

    Args:
        path: ``.onnx`` or ``.pt2`` written by ``detseg.export`` / ``tools/export.py``.
        device: ``"cpu"`` or ``"cuda[:i]"`` (ONNX Runtime's CUDA provider where installed).
        score_threshold: instances below it are dropped.
        compile: ``.pt2`` only: run the graph through ``torch.compile`` (the first image of a
            new size compiles, tens of seconds; later calls are faster than eager).
    """

    def __init__(self, path: str, *, device: str = "cpu", score_threshold: float = 0.0,
                 compile: bool = False):
        from ..data.transforms import eval_transform
        if not os.path.isfile(path):
            raise CheckpointError(f"{path}: no such file")
        self.path, self.device = path, torch.device(device)
        if path.lower().endswith(".onnx"):
            if compile:
                raise UsageError(f"{path}: torch.compile runs .pt2 files; ONNX Runtime runs .onnx")
            self.runner = _OnnxRunner(path, self.device)
        else:
            self.runner = _Pt2Runner(path, self.device, compile)
        self.meta = read_metadata(path, self.runner.raw)
        self.class_names, self.cat_ids = list(self.meta["class_names"]), list(self.meta["cat_ids"])
        panoptic = self.meta.get("panoptic")
        self.stuff_names = panoptic.get("stuff_names") if panoptic else None
        self.stuff_cat_ids = panoptic.get("stuff_cat_ids") if panoptic else None
        self.score_threshold = score_threshold
        self.transform = (eval_transform(self.meta["min_size_test"], self.meta["max_size"])
                          if self.meta["input_resize"] == "data" else None)
        if self.meta.get("classify"):  # the classification resize and centre crop
            from ..data.classification import ClassifyTransform
            c = self.meta["classify"]
            self.transform = ClassifyTransform(c["size"], train=False, crop_ratio=c["crop_ratio"])

    def _inputs(self, sample: dict) -> list[torch.Tensor]:
        image = sample["image"]
        inputs = [image, torch.tensor(sample["orig_size"], dtype=torch.int64)]
        ss = self.meta["selective_search"]
        if ss is not None and "proposals" in sample:
            inputs.append(sample["proposals"])
        elif ss is not None:  # as SelectiveSearchProposals does for images without cached proposals
            from ..modeling.proposals.selective_search import selective_search
            boxes = selective_search(image.permute(1, 2, 0).numpy(), ss["mode"], ss["max_per_image"])
            inputs.append(torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        return inputs

    def predict_batch(self, images, proposals=None) -> list[dict]:
        """One result dict per image, as ``Predictor.predict_batch``. A batched graph
        (``meta["batch"]``: semantic heads) runs each run of consecutive images of one size in
        one call; other graphs take one image per call."""
        from ..data.prepare import prepare_image
        given = [None] * len(images) if proposals is None else list(proposals)
        samples = [prepare_image(im, self.transform, i, props)
                   for i, (im, props) in enumerate(zip(images, given))]
        static = self.meta["static_size"]
        for s in samples:
            if static and tuple(s["orig_size"]) != tuple(static):
                raise UsageError(f"{self.path}: exported for {static[0]}x{static[1]} images (--static); "
                                 f"image {s['image_id']} is {s['orig_size'][0]}x{s['orig_size'][1]}: "
                                 f"export again without --static, or resize it first")
        if not self.meta["batch"]:
            return [self._result(s, dict(zip(self.meta["outputs"], self.runner(self._inputs(s)))))
                    for s in samples]
        results: list[dict] = []
        for group in _same_size_runs(samples):
            stacked = torch.stack([s["image"] for s in group])
            outputs = self.runner([stacked, torch.tensor(group[0]["orig_size"], dtype=torch.int64)])
            for i, s in enumerate(group):
                results.append(self._result(s, {n: v[i] for n, v in zip(self.meta["outputs"], outputs)}))
        return results

    def _result(self, sample: dict, outputs: dict) -> dict:
        """The result dict of one image from the graph's outputs for it."""
        from ..ops.paste_masks import paste_masks
        oh, ow = sample["orig_size"]
        result: dict = {"heads": {}}
        raw = {}  # instances before the score threshold, masks unpasted: what the merge reads
        for name, head in self.meta["heads"].items():
            if head["output"] == "semantic":
                value = outputs[f"{name}.labels"]
            elif head["output"] == "classes":
                value = outputs[f"{name}.scores"].float()
            else:
                masks = outputs.get(f"{name}.masks")
                inst = Instances((oh, ow), outputs[f"{name}.boxes"], outputs[f"{name}.scores"],
                                 outputs[f"{name}.labels"], masks)
                raw[name] = inst
                inst = inst[inst.scores >= self.score_threshold]
                if masks is not None:
                    inst.masks = paste_masks(inst.masks, inst.boxes, (oh, ow))
                value = inst
            result["heads"][name] = value
            result.setdefault(RESULT_KEYS[head["output"]], value)
        if self.meta.get("panoptic"):
            result["panoptic"] = self._panoptic(result, raw)
        return result

    def _panoptic(self, result: dict, raw: dict) -> tuple:
        """The eager model's merge (``Model._merge``) on the graph's file-sized outputs: the
        first semantic head's labels and the raw instances of the first head with masks."""
        from ..modeling.panoptic import merge_panoptic, name_segments
        settings = self.meta["panoptic"]
        masked = next(n for n, h in self.meta["heads"].items() if h["output"] == "instances" and h["masks"])
        ids, segments = merge_panoptic(result["semantic"], raw[masked], **{
            k: settings[k] for k in ("instance_score", "overlap", "min_area")})
        return ids, name_segments(segments, self.class_names, self.cat_ids, self.stuff_names,
                                  self.stuff_cat_ids)

    def __call__(self, image, proposals=None) -> dict:
        return self.predict_batch([image], None if proposals is None else [proposals])[0]


def _same_size_runs(samples: list) -> list[list]:
    """``samples`` split into runs of consecutive ones with the same image and file size (a
    batched graph takes one image size and one file size per call)."""
    import itertools

    def sizes(sample: dict) -> tuple:
        return tuple(sample["image"].shape), tuple(sample["orig_size"])
    return [list(run) for _, run in itertools.groupby(samples, key=sizes)]


def load_exported(path: str, *, device: str = "cpu", score_threshold: float = 0.0,
                  config: Optional[str] = None) -> ExportedPredictor:
    """``ExportedPredictor`` for ``load_model``; an exported file carries its architecture, so a
    ``config`` is refused."""
    if config is not None:
        raise UsageError(f"{path} is an exported model: it carries its own architecture, --config does "
                         f"not apply")
    return ExportedPredictor(path, device=device, score_threshold=score_threshold)
