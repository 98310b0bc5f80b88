"""ONNX export of detseg's ops: ``detseg::roi_align`` as ONNX ``RoiAlign`` (opset 16+).

Pass ``onnx_translations()`` as ``custom_translation_table`` to ``torch.onnx.export(...,
dynamo=True)`` (``export_onnx`` does). ONNX's ``RoiAlign`` is torchvision's (Mask R-CNN's)
RoIAlign: ``aligned=False`` is its ``output_half_pixel`` mode, ``aligned=True`` its ``half_pixel``
mode, and an adaptive sampling ratio is ``sampling_ratio=0``.
"""
from __future__ import annotations

import torch


def onnx_translations() -> dict:
    """``{torch op overload: onnxscript function}`` for the dynamo ONNX exporter.

    Raises:
        ImportError: naming the missing package (``onnxscript``) when it is not installed.
    """
    try:
        from onnxscript import opset18 as op
    except ImportError as e:
        raise ImportError("ONNX export needs the onnxscript package: pip install onnxscript onnx") from e

    def roi_align(input, rois, spatial_scale: float, pooled_height: int, pooled_width: int,
                  sampling_ratio: int, aligned: bool):
        # rois [K, 5] (batch index, x1, y1, x2, y2) -> ONNX's boxes [K, 4] and batch_indices [K]
        batch = op.Cast(op.Squeeze(op.Slice(rois, [0], [1], [1]), [1]), to=7)  # 7: INT64
        boxes = op.Slice(rois, [1], [5], [1])
        return op.RoiAlign(input, boxes, batch,
                           coordinate_transformation_mode="half_pixel" if aligned else "output_half_pixel",
                           mode="avg", output_height=pooled_height, output_width=pooled_width,
                           sampling_ratio=max(int(sampling_ratio), 0), spatial_scale=float(spatial_scale))

    return {torch.ops.detseg.roi_align.default: roi_align}


def export_onnx(model: torch.nn.Module, args: tuple, path: str, **kwargs):
    """``torch.onnx.export(model, args, path, dynamo=True)`` with detseg's ops translated.

    Returns:
        the ``ONNXProgram`` (already saved at ``path``).
    """
    table = {**onnx_translations(), **kwargs.pop("custom_translation_table", {})}
    return torch.onnx.export(model, args, path, dynamo=True, custom_translation_table=table, **kwargs)
