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
  them as an input, ``Tensor[P, 4]`` in the pixels of the image given.

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

Image sizes are dynamic unless ``static_size=(H, W)`` (``tools/export.py --static H W``): then the
graph is for files of that size only (a fixed camera, runtimes that build for one shape), its
image input has the size such a file has after the data pipeline's resize, and the metadata's
``static_size`` lets a runner refuse other files in one line.

The file carries its class names, category ids, inputs, outputs and resize in its metadata
(ONNX ``metadata_props``, the ``.pt2`` archive's ``detseg.json``); ``EXPORT_FORMAT`` versions it.
"""
from __future__ import annotations

import json
import os
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data.transforms import PAD_DIVISOR
from .modeling.heads import SEMANTIC
from .modeling.proposals import SelectiveSearchProposals
from .structures import Batch
from .utils import UsageError, atomic_path

# Bumped whenever the inputs, outputs or metadata change meaning: a runner refuses other versions.
# 2: semantic-only graphs take a batch of images (metadata "batch"); "static_size".
EXPORT_FORMAT = 2
FORMATS = ("onnx", "pt2")
DEFAULT_OPSET = 18  # RoiAlign's half_pixel mode needs 16; onnxscript's ops are opset 18


class ExportGraph(nn.Module):
    """A ``Model`` as one traceable function of one image (see the module docstring).

    Args:
        model: a ``detseg.modeling.model.Model`` in eval mode.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.eval()
        self.head_names = list(model.heads)
        sources = [h.proposal_source() for h in model.heads.values()]
        self.selective_search = next((p for p in sources if isinstance(p, SelectiveSearchProposals)), None)
        self.needs_proposals = self.selective_search is not None
        # a batch dimension where every head is per-pixel and no per-image resize runs inside
        self.batched = (all(h.output == SEMANTIC for h in model.heads.values()) and model.resize is None
                        and model.panoptic is None)

    def output_names(self) -> list[str]:
        names = []
        for name, head in self.model.heads.items():
            if head.output == SEMANTIC:
                names.append(f"{name}.labels")
            else:
                names += [f"{name}.boxes", f"{name}.scores", f"{name}.labels"]
                if head.predicts_masks:
                    names.append(f"{name}.masks")
        return names

    def input_names(self) -> list[str]:
        if self.batched:
            return ["images", "file_size"]
        return ["image", "file_size"] + (["proposals"] if self.needs_proposals else [])

    def forward(self, image: Tensor, file_size: Tensor, proposals: Optional[Tensor] = None) -> tuple:
        if self.batched:
            return self.forward_batch(image, file_size)
        h, w = image.shape[1], image.shape[2]
        if self.model.resize is None:
            images = _pad(image[None])
        else:
            # the model resizes (and pads) the image itself; padding it first would only be
            # cropped off again, and would tie the graph to whether the example needed padding
            images = image[None]
        batch = Batch(images=images, image_sizes=[(h, w)],
                      proposals=None if proposals is None else [proposals.float()])
        out = self.model(batch)
        fh, fw = file_size.to(torch.float64).unbind(0)
        results: list[Tensor] = []
        for name, head in self.model.heads.items():
            pred = out[name]
            if head.output == SEMANTIC:
                results.append(_label_maps(pred, h, w, file_size)[0])
                continue
            inst = pred[0]
            ih, iw = inst.image_size
            # to_file_pixels' scale factors: file / predicted size, in float64, then the boxes' dtype
            f = torch.stack([fw / iw, fh / ih, fw / iw, fh / ih]).to(inst.boxes.dtype)
            results += [inst.boxes * f, inst.scores, inst.labels]
            if head.predicts_masks:
                results.append(inst.masks)
        return tuple(results)

    def forward_batch(self, images: Tensor, file_size: Tensor) -> tuple:
        """``images`` uint8 ``[B, 3, H, W]`` of one size → per head ``labels [B, h, w]``; what
        ``Model.forward`` does for semantic heads, without its per-image size list (whose length
        would fix B)."""
        h, w = images.shape[2], images.shape[3]
        padded = _pad(images)
        features = self.model.backbone(self.model.preprocess(padded))
        return tuple(_label_maps(head.forward_test(features, Batch(images=padded)), h, w, file_size)
                     for head in self.model.heads.values())


def _pad(images: Tensor) -> Tensor:
    """``[B, 3, H, W]`` zero-padded bottom / right to multiples of 32, as ``collate`` pads a batch."""
    h, w = images.shape[2], images.shape[3]
    hp = (h + PAD_DIVISOR - 1) // PAD_DIVISOR * PAD_DIVISOR
    wp = (w + PAD_DIVISOR - 1) // PAD_DIVISOR * PAD_DIVISOR
    return F.pad(images, (0, wp - w, 0, hp - h))


def _label_maps(logits: Tensor, h, w, file_size: Tensor) -> Tensor:
    """uint8 ``[B, oh, ow]`` labels of ``logits [B, C, Hp, Wp]`` cropped to ``h x w`` and, as
    ``labels_at`` does, upsampled bilinearly to the file's size before the argmax."""
    oh, ow = file_size.tolist()
    torch._check(oh > 0)
    torch._check(ow > 0)
    up = F.interpolate(logits[:, :, :h, :w].float(), size=(oh, ow), mode="bilinear", align_corners=False)
    return up.argmax(1).to(torch.uint8)


def metadata(predictor, graph: ExportGraph, static_size: Optional[tuple[int, int]] = None) -> dict:
    """What a runner needs besides the graph: classes, inputs, outputs, resize, fixed file size."""
    from .utils import __version__
    cfg = predictor.cfg
    heads = {name: {"type": cfg.model.heads[name].type, "output": head.output,
                    "masks": head.predicts_masks}
             for name, head in graph.model.heads.items()}
    return {"export_format": EXPORT_FORMAT, "detseg_version": __version__,
            "class_names": list(predictor.class_names), "cat_ids": [int(c) for c in predictor.cat_ids],
            "inputs": graph.input_names(), "outputs": graph.output_names(), "heads": heads,
            "input_resize": cfg.model.input_resize, "batch": graph.batched,
            "static_size": None if static_size is None else [int(v) for v in static_size],
            "min_size_test": cfg.data.min_size_test, "max_size": cfg.data.max_size,
            "backbone": cfg.model.backbone.name,
            "selective_search": None if graph.selective_search is None else {
                "mode": graph.selective_search.mode, "max_per_image": graph.selective_search.max_per_image}}


def example_inputs(graph: ExportGraph, size: tuple[int, int] = (320, 416),
                   file_size: Optional[tuple[int, int]] = None) -> tuple:
    """Inputs to trace with: a random image of ``size`` (two for a batched graph: a batch of one
    would be traced as a fixed size of one), the file's size (default: ``size``), and a few
    proposals when needed."""
    g = torch.Generator().manual_seed(0)
    h, w = size
    image = torch.randint(0, 256, ((2,) if graph.batched else ()) + (3, h, w), dtype=torch.uint8,
                          generator=g)
    args: tuple = (image, torch.tensor(file_size or size, dtype=torch.int64))
    if graph.needs_proposals:
        xy = torch.rand(24, 2, generator=g) * torch.tensor([w / 2, h / 2])
        wh = 16 + torch.rand(24, 2, generator=g) * torch.tensor([w / 2, h / 2])
        args += (torch.cat([xy, xy + wh], 1),)
    return args


def trace(graph: ExportGraph, example: tuple, dynamic_size: bool = True) -> torch.export.ExportedProgram:
    """``torch.export`` with the image's height and width (unless ``dynamic_size`` is False), the
    batch of a batched graph and the proposal count dynamic."""
    dyn = torch.export.Dim.DYNAMIC
    image = {1: dyn, 2: dyn} if dynamic_size else {}
    if graph.batched:
        image = {0: dyn, **{d + 1: v for d, v in image.items()}}
    shapes: tuple = (image, None) + (({0: dyn},) if len(example) > 2 else ())
    heads = list(graph.model.heads.values())
    for head in heads:
        head.set_export_mode(True)
    try:
        with torch.no_grad():
            return torch.export.export(graph, example, dynamic_shapes=shapes, strict=False)
    finally:
        for head in heads:
            head.set_export_mode(False)


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
        UsageError: an unknown format, an opset below 16 or above ``max_opset()``, a
            panoptic-only output.
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


def max_opset() -> int:
    """The newest ONNX opset this torch's exporter writes (a larger one it would silently lower)."""
    from torch.onnx import _constants
    return int(getattr(_constants, "ONNX_MAX_OPSET", DEFAULT_OPSET))


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
        if static_size is None:
            self.example = example_inputs(self.graph)
        else:  # the size a file of static_size has after the data pipeline's resize
            check_static_size(static_size)
            from .api import prepare_image
            import numpy as np
            blank = np.zeros(tuple(static_size) + (3,), np.uint8)
            shape = prepare_image(blank, predictor.transform, 0)["image"].shape
            self.example = example_inputs(self.graph, tuple(shape[1:]), tuple(static_size))
        self.program = trace(self.graph, self.example, dynamic_size=static_size is None)

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

    from .ops.onnx import export_onnx
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


class ParityError(RuntimeError):
    """An exported file's results differ from the eager model's beyond float rounding."""


# What "the same result" means for an export (float rounding of a different runtime, no more):
# boxes within 1e-2 px, scores within 1e-4, and label maps that differ in at most this share of
# pixels (where two classes' upsampled scores tie to rounding; tests/tools/test_export.py checks
# that every differing pixel is such a tie)
BOX_TOL, SCORE_TOL, PIXEL_TOL = 1e-2, 1e-4, 1e-4


def compare_predictions(eager: dict, exported: dict) -> dict:
    """Largest differences between two result dicts of one image (``Predictor`` outputs).

    Returns:
        ``{head: {"count": (n eager, n exported), "box": px, "score": ..., "labels_equal": bool,
        "mask_pixels": differing fraction}}`` for instance heads, ``{"pixels": differing
        fraction}`` for semantic heads.
    """
    out = {}
    for name, a in eager["heads"].items():
        b = exported["heads"][name]
        if isinstance(a, Tensor):
            out[name] = {"pixels": float((a != b).float().mean()) if a.shape == b.shape else 1.0}
            continue
        row = {"count": (len(a), len(b))}
        if len(a) == len(b) and len(a):
            order = tie_order(a, b)
            row["reordered"] = int((order != torch.arange(len(b))).sum())
            b = b[order]
            exported["heads"][name] = b  # aligned with the eager rows, for callers comparing masks
            row.update(box=float((a.boxes - b.boxes).abs().max()),
                       score=float((a.scores - b.scores).abs().max()),
                       labels_equal=bool((a.labels == b.labels).all()))
            if a.masks is not None:
                row["mask_pixels"] = float((a.masks != b.masks).float().mean())
        out[name] = row
    return out


def tie_order(a, b) -> Tensor:
    """Indices that align ``b``'s detections with ``a``'s: the identity, except where two
    detections' scores tie to float rounding (within ``SCORE_TOL``) and the runtimes ranked them
    the other way round; then the tied row with ``a``'s label and box is taken."""
    order = torch.arange(len(b))
    used = torch.zeros(len(b), dtype=torch.bool)
    for i in range(len(a)):
        fits = ((a.labels[i] == b.labels) & ((a.boxes[i] - b.boxes).abs().amax(1) <= BOX_TOL)
                & ((a.scores[i] - b.scores).abs() <= SCORE_TOL) & ~used)
        if fits[i]:
            j = i
        elif fits.any():
            j = int(torch.nonzero(fits)[0])
        else:  # no match: the first unused row, which the tolerances will then report
            j = i if not used[i] else int(torch.nonzero(~used)[0])
        order[i], used[j] = j, True
    return order


def parity_problems(diff: dict) -> list[str]:
    """The differences of ``compare_predictions`` that are more than float rounding."""
    problems = []
    for name, row in diff.items():
        if "pixels" in row:
            if row["pixels"] > PIXEL_TOL:
                problems.append(f"{name}: {row['pixels']:.2%} of the label map differs")
            continue
        if row["count"][0] != row["count"][1]:
            problems.append(f"{name}: {row['count'][0]} detections eagerly, {row['count'][1]} exported")
        elif row["count"][0]:
            if row["box"] > BOX_TOL or row["score"] > SCORE_TOL or not row["labels_equal"]:
                problems.append(f"{name}: boxes differ by up to {row['box']:.3g} px, scores by "
                                f"{row['score']:.3g}, labels equal: {row['labels_equal']}")
    return problems


def synthetic_photo(size: tuple[int, int] = (300, 400)):
    """A deterministic photo stand-in: a gradient with filled shapes, ``np.ndarray [H, W, 3]``."""
    import cv2
    import numpy as np
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) * 255 // (h + w)], -1).astype(np.uint8)
    cv2.circle(img, (w // 4, h // 3), min(h, w) // 6, (220, 40, 40), -1)
    cv2.rectangle(img, (w // 2, h // 2), (w // 2 + w // 4, h // 2 + h // 3), (30, 200, 60), -1)
    triangle = np.array([[w // 8, h - 10], [w // 3, h // 2], [w // 2, h - 10]], np.int32)
    cv2.fillPoly(img, [triangle], (40, 60, 220))
    return img


def fixed_proposals(meta: dict, image):
    """Selective-search proposals ``[P, 4]`` for ``image`` (file pixels) when the exported file's
    heads read them (``meta``: its metadata), else None. OpenCV's selective search gives other
    boxes on each call, so a comparison hands the same ones to both sides."""
    import numpy as np
    settings = meta["selective_search"]
    if settings is None:
        return None
    from .modeling.proposals.selective_search import selective_search
    return selective_search(np.asarray(image), settings["mode"], settings["max_per_image"])


def check_parity(predictor, path: str, images=None) -> dict:
    """Run the exported file beside ``predictor`` on ``images`` (default: ``synthetic_photo()``, at
    the file's static size if it has one).

    Returns:
        the ``compare_predictions`` rows, one per image (under its index).

    Raises:
        ParityError: naming the first difference beyond float rounding.
    """
    from .exported import ExportedPredictor
    runner = ExportedPredictor(path, score_threshold=predictor.score_threshold)
    size = runner.meta["static_size"]
    images = [synthetic_photo(tuple(size) if size else (300, 400))] if images is None else list(images)
    report = {}
    for i, image in enumerate(images):
        proposals = fixed_proposals(runner.meta, image)
        diff = compare_predictions(predictor(image, proposals), runner(image, proposals))
        problems = parity_problems(diff)
        if problems:
            raise ParityError(f"image {i}: " + "; ".join(problems))
        report[str(i)] = diff
    return report
