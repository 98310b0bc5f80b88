"""The export file format: its version, what its metadata holds (written with the graph, checked
when read), and which files are detseg exports. ONNX keeps the metadata in ``metadata_props``
(``detseg.<key>``: JSON), a ``.pt2`` archive in ``detseg.json``; ``EXPORT_FORMAT`` versions it."""
from __future__ import annotations

import json
from typing import Optional

from ..engine.checkpoint import CheckpointError


# Bumped whenever the inputs, outputs or metadata change meaning: a runner refuses other versions.
# 2: semantic-only graphs take a batch of images (metadata "batch"); "static_size".
# 3: "panoptic": a panoptic model's merge settings and stuff classes (the runner merges).
EXPORT_FORMAT = 3


FORMATS = ("onnx", "pt2")


DEFAULT_OPSET = 18  # RoiAlign's half_pixel mode needs 16; onnxscript's ops are opset 18
EXPORTED_SUFFIXES = (".onnx", ".pt2")


REQUIRED_KEYS = ("export_format", "detseg_version", "class_names", "cat_ids", "inputs", "outputs", "heads",
                 "input_resize", "min_size_test", "max_size", "selective_search", "batch", "static_size",
                 "panoptic")


def is_exported(path: str) -> bool:
    return str(path).lower().endswith(EXPORTED_SUFFIXES)


def written_by_export(path: str) -> bool:
    """Whether ``path`` is a file that ``tools/export.py`` wrote (its detseg metadata is there):
    the output guard lets a new export replace only such a file."""
    lower = str(path).lower()
    try:
        if lower.endswith(".pt2"):
            import zipfile
            with zipfile.ZipFile(path) as archive:
                return any(n.endswith("detseg.json") for n in archive.namelist())
        if lower.endswith(".onnx"):
            import onnx
            model = onnx.load(path, load_external_data=False)
            return any(p.key == "detseg.export_format" for p in model.metadata_props)
    except Exception:  # unreadable, truncated, another format: not an export of ours
        return False
    return False


def read_metadata(path: str, raw: dict) -> dict:
    """Checked metadata from the file's ``detseg.*`` entries (``raw``: key → JSON text).

    Raises:
        CheckpointError: one line naming the file and what is missing or of another version.
    """
    missing = [k for k in REQUIRED_KEYS if k not in raw]
    if "export_format" in missing:
        raise CheckpointError(f"{path}: not a detseg export (no detseg.export_format in its metadata); "
                              f"export a detseg checkpoint with tools/export.py")
    try:
        meta = {k: json.loads(v) for k, v in raw.items()}
    except ValueError as e:
        raise CheckpointError(f"{path}: unreadable detseg metadata ({e})") from None
    if meta["export_format"] != EXPORT_FORMAT:
        from ..utils import __version__
        raise CheckpointError(f"{path}: exported by detseg {meta.get('detseg_version', '?')} in export "
                              f"format {meta['export_format']}; this detseg ({__version__}) reads format "
                              f"{EXPORT_FORMAT}: export the checkpoint again with this version")
    if missing:
        raise CheckpointError(f"{path}: metadata key detseg.{missing[0]} is missing; export the "
                              f"checkpoint again with tools/export.py")
    return meta


def metadata(predictor, graph, static_size: Optional[tuple[int, int]] = None) -> dict:
    """What a runner needs besides the graph: classes, inputs, outputs, resize, fixed file size."""
    from ..utils import __version__
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
            "classify": ({"size": cfg.data.classify.size, "crop_ratio": cfg.data.classify.crop_ratio}
                         if any(h.output == "classes" for h in graph.model.heads.values()) else None),
            "backbone": cfg.model.backbone.name,
            # a panoptic model's merge runs on the graph's outputs, outside it (data-dependent loops)
            "panoptic": (None if graph.model.panoptic is None else
                         {**graph.model.panoptic, "stuff_names": predictor.stuff_names,
                          "stuff_cat_ids": predictor.stuff_cat_ids}),
            "selective_search": None if graph.selective_search is None else {
                "mode": graph.selective_search.mode, "max_per_image": graph.selective_search.max_per_image}}


def max_opset() -> int:
    """The newest ONNX opset this torch's exporter writes (a larger one it would silently lower)."""
    from torch.onnx import _constants
    return int(getattr(_constants, "ONNX_MAX_OPSET", DEFAULT_OPSET))
