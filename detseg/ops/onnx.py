"""ONNX export of detseg's ops: ``detseg::roi_align`` as ONNX ``RoiAlign`` (opset 16+),
``detseg::batched_nms`` as ONNX ``NonMaxSuppression``.

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

    def batched_nms(boxes, scores, idxs, iou_threshold: float, max_keep: int, num_classes: int,
                    search: bool):
        # ONNX NonMaxSuppression runs per class on a [1, classes, N] score table: each box's
        # score sits in its own class's row, -inf elsewhere, and the score threshold (the lowest
        # float) lets every finite score through. Its output is class-major; one TopK restores
        # detseg's order, by decreasing score.
        classes = op.Range(op.Constant(value_int=0), op.Constant(value_int=num_classes),
                           op.Constant(value_int=1))
        own = op.Equal(op.Unsqueeze(idxs, [0]), op.Unsqueeze(classes, [1]))  # [C, N]
        table = op.Where(own, op.Unsqueeze(scores, [0]), op.CastLike(op.Constant(value_float=-float("inf")),
                                                                     scores))
        count = op.Shape(boxes, start=0, end=1)
        selected = op.NonMaxSuppression(op.Unsqueeze(boxes, [0]), op.Unsqueeze(table, [0]), count,
                                        op.Constant(value_floats=[iou_threshold]),
                                        op.Constant(value_floats=[-3.0e38]))
        keep = op.Squeeze(op.Slice(selected, [2], [3], [1]), [1])  # the box column of [M, 3]
        _, order = op.TopK(op.Gather(scores, keep), op.Shape(keep), largest=1, sorted=1)
        keep = op.Gather(keep, order)
        if max_keep >= 0:
            keep = op.Slice(keep, [0], [max_keep], [0])
        return keep

    def window_max_pool(input, windows, level_sizes):
        # one MaxRoiPool per level; the windows are already in feature-map cells (scale 1)
        parts = []
        for h, w in zip(level_sizes[::2], level_sizes[1::2]):
            pooled = op.MaxRoiPool(input, windows, pooled_shape=[h, w], spatial_scale=1.0)
            # [K, C, h, w] -> [K, C * h * w]; 0 in a Reshape shape copies that input dimension
            parts.append(op.Reshape(pooled, op.Constant(value_ints=[0, -1])))
        return parts[0] if len(parts) == 1 else op.Concat(*parts, axis=1)

    return {torch.ops.detseg.roi_align.default: roi_align,
            torch.ops.detseg.window_max_pool.default: window_max_pool,
            torch.ops.detseg.batched_nms.default: batched_nms}


def export_onnx(model: torch.nn.Module, args: tuple, path: str, **kwargs):
    """``torch.onnx.export(model, args, path, dynamo=True)`` with detseg's ops translated.

    Returns:
        the ``ONNXProgram`` (already saved at ``path``).
    """
    table = {**onnx_translations(), **kwargs.pop("custom_translation_table", {})}
    return torch.onnx.export(model, args, path, dynamo=True, custom_translation_table=table, **kwargs)
