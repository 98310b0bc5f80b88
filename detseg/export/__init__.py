"""Export a trained model as one graph, image in and detections out: ONNX or ``torch.export``.

    from detseg import load_model
    from detseg.export import export
    export(load_model("runs/x/best.pth", device="cpu"), "model.onnx")    # or "model.pt2"

The graph (``ExportGraph``) holds everything the eager predictor does after reading the file:
padding to a multiple of 32, normalisation, the in-model resize of torchvision-style configs,
every head, box decoding, class-wise NMS, top-k, scaling the boxes to the file's pixels and,
for semantic heads, the bilinear upsampling to the file's size and the argmax. What stays outside:

- the data pipeline's resize of configs with ``model.input_resize: data`` (an OpenCV resize; the
  metadata says the sizes, and ``ExportedPredictor`` applies it as ``Predictor`` does);
- pasting the ``28 x 28`` mask probabilities into the image (``detseg.ops.paste_masks``): the graph
  returns them with their boxes, the way Mask R-CNN defines its output;
- selective search, which is not a network: heads that read selective-search proposals take
  them as an input, ``Tensor[P, 4]`` in the pixels of the image given;
- a panoptic model's merge (``detseg.modeling.panoptic.merge_panoptic``: a loop over a
  data-dependent number of instances): the metadata's ``panoptic`` holds its settings and the
  stuff classes, and ``ExportedPredictor`` merges the graph's semantic labels and instances
  exactly as the eager model does.

Inputs: ``image`` uint8 ``[3, H, W]`` RGB (any H, W), ``file_size`` int64 ``[2]`` (the file's
height, width: the size results are given in), then ``proposals`` where a head needs them. Outputs,
per head in the model's order: ``<head>.boxes [N, 4]``, ``<head>.scores [N]``, ``<head>.labels
[N]`` (int64, ``0..K-1``) and ``<head>.masks [N, 28, 28]`` for instance heads, ``<head>.labels``
uint8 ``[h, w]`` (0 background, ``k + 1`` class ``k``) for semantic heads. One image per call.

Batches where the heads allow: a model whose heads are all semantic (FCN) and that does not
resize inside itself takes ``images`` uint8 ``[B, 3, H, W]`` instead (any B; images of one size,
from files of one size, such as a video's frames) and returns ``<head>.labels [B, h, w]``; the
metadata says ``"batch": true``. Instance heads keep per-image proposal lists, NMS and output
counts, so their graphs take one image.

Image sizes are dynamic (a classifier's: fixed at ``data.classify.size``, the crop every image
is made into before the graph) unless ``static_size=(H, W)`` (``tools/export.py --static H W``): then the
graph is for files of that size only (a fixed camera, runtimes that build for one shape), its
image input has the size such a file has after the data pipeline's resize, and the metadata's
``static_size`` lets a runner refuse other files in one line.

The file carries its class names, category ids, inputs, outputs and resize in its metadata
(ONNX ``metadata_props``, the ``.pt2`` archive's ``detseg.json``); ``EXPORT_FORMAT`` versions it.

The package, by what each part does: ``graph`` (the graph, traced), ``format`` (the file format,
its metadata written and checked), this module (``export``: tracing and writing a file),
``runtime`` (running a file: ``ExportedPredictor``, ``load_model``'s exported branch), ``parity``
(exported vs eager) and ``cache`` (a checkpoint's export made once for ``tools/infer.py``).
"""
from __future__ import annotations

import json
import os
from typing import Optional

import torch

from .format import DEFAULT_OPSET, FORMATS, max_opset, metadata
from .graph import ExportGraph, example_inputs, trace
from ..utils import UsageError, atomic_path


def export(predictor, path: str, *, fmt: Optional[str] = None, opset: int = DEFAULT_OPSET,
           static_size: Optional[tuple[int, int]] = None) -> dict:
    """Write ``predictor``'s model to ``path`` as ONNX (``.onnx``) or ``torch.export`` (``.pt2``).

    Args:
        predictor: a ``detseg.Predictor`` (``load_model``); its model is exported on the CPU in
            float32, without the fp16 autocast or channels-last layout of its eager runs.
        fmt: ``"onnx"`` or ``"pt2"`` (default: from the file extension).
        static_size: (H, W): a graph for files of this size only (see the module docstring).

    Returns:
        the metadata written into the file.

    Raises:
        UsageError: an unknown format, an opset below 16 or above ``max_opset()``.
        ImportError: ONNX export without ``onnxscript`` / ``onnx`` installed.
    """
    fmt = fmt or os.path.splitext(path)[1].lstrip(".").lower()
    if fmt not in FORMATS:
        raise UsageError(f"{path}: export format must be one of {', '.join(FORMATS)} (from --format or "
                         f"the file extension), got {fmt!r}")
    if fmt == "onnx" and opset < 16:
        raise UsageError(f"--opset {opset}: ONNX RoiAlign with half-pixel boxes needs opset 16 or later")
    if fmt == "onnx" and opset > max_opset():
        raise UsageError(f"--opset {opset}: this torch's ONNX exporter writes opsets up to "
                         f"{max_opset()}; choose 16 to {max_opset()}")
    return Traced(predictor, static_size).write(path, fmt, opset=opset)


def check_static_size(static_size: tuple[int, int]) -> None:
    """Raises UsageError (one line) unless ``static_size`` is a positive (H, W)."""
    if min(static_size) < 1:
        raise UsageError(f"--static {static_size[0]} {static_size[1]}: sizes must be positive")


class Traced:
    """A predictor's model traced once (``torch.export``), to write in one format or both.

    Args:
        predictor, static_size: as in ``export``.
    """

    def __init__(self, predictor, static_size: Optional[tuple[int, int]] = None):
        model = predictor.model.to("cpu", memory_format=torch.contiguous_format).float().eval()
        self.graph = ExportGraph(model)
        self.meta = metadata(predictor, self.graph, static_size)
        fixed = self.meta.get("classify")
        if static_size is None and fixed:
            # A classifier's input is always the data pipeline's size x size crop: traced at that
            # size, static, since adaptive pooling to a grid (AlexNet's 6 x 6, VGG's 7 x 7) has
            # no form that follows a dynamic map size in ONNX.
            self.example = example_inputs(self.graph, (fixed["size"], fixed["size"]))
        elif static_size is None:
            self.example = example_inputs(self.graph)
        else:  # the size a file of static_size has after the data pipeline's resize
            check_static_size(static_size)
            from ..data.prepare import prepare_image
            import numpy as np
            blank = np.zeros(tuple(static_size) + (3,), np.uint8)
            shape = prepare_image(blank, predictor.transform, 0)["image"].shape
            self.example = example_inputs(self.graph, tuple(shape[1:]), tuple(static_size))
        self.program = trace(self.graph, self.example, dynamic_size=static_size is None and not fixed)

    def write(self, path: str, fmt: str, *, opset: int = DEFAULT_OPSET) -> dict:
        """Write ``path`` atomically as ``fmt`` (``"onnx"`` or ``"pt2"``); returns the metadata."""
        with atomic_path(path) as tmp:
            if fmt == "pt2":
                torch.export.save(self.program, tmp, extra_files={"detseg.json": json.dumps(self.meta)})
            else:
                _write_onnx(self.program, self.example, tmp, self.meta, self.graph, opset)
        return self.meta


def _write_onnx(program, example, path: str, meta: dict, graph: ExportGraph, opset: int) -> None:
    import onnx

    from ..ops.onnx import export_onnx
    onnx_program = export_onnx(program, example, None, opset_version=opset, verbose=False,
                               input_names=graph.input_names(), output_names=graph.output_names())
    model = onnx_program.model_proto
    written = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if written != opset:  # the exporter lowers or raises it without a word
        raise UsageError(f"--opset {opset}: the ONNX exporter wrote opset {written} instead; "
                         f"choose {written}")
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = f"detseg.{key}", json.dumps(value)
    onnx.save_model(model, path)
