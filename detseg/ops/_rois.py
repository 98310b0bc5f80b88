"""The two RoI formats every op accepts, reduced to one."""
from __future__ import annotations

from typing import Sequence, Union

import torch
from torch import Tensor

Rois = Union[Tensor, Sequence[Tensor]]


def roi_tensor(rois: Rois, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``Tensor[K, 5]`` (batch index, x1, y1, x2, y2) from ``Tensor[K, 5]`` or a list of per-image
    ``Tensor[L, 4]``, in ``dtype`` on ``device``.

    Raises:
        ValueError: naming the offending shape.
    """
    if isinstance(rois, (list, tuple)):
        for i, r in enumerate(rois):
            if not isinstance(r, Tensor) or r.dim() != 2 or r.shape[1] != 4:
                shape = tuple(r.shape) if isinstance(r, Tensor) else type(r).__name__
                raise ValueError(f"rois[{i}] must be Tensor[L, 4], got {shape}")
        if not rois:
            return torch.zeros((0, 5), dtype=dtype, device=device)
        boxes = torch.cat([r.to(device=device, dtype=dtype) for r in rois], 0)
        # r.shape[0], not len(r): under torch.export the count is symbolic, len() would need an int
        batch = torch.cat([torch.full((r.shape[0], 1), i, dtype=dtype, device=device)
                           for i, r in enumerate(rois)])
        return torch.cat([batch, boxes], 1)
    if not isinstance(rois, Tensor) or rois.dim() != 2 or rois.shape[1] != 5:
        shape = tuple(rois.shape) if isinstance(rois, Tensor) else type(rois).__name__
        raise ValueError(f"rois must be Tensor[K, 5] (batch index, x1, y1, x2, y2) or a list of "
                         f"Tensor[L, 4], got {shape}")
    return rois.to(device=device, dtype=dtype)


def pair(size: Union[int, Sequence[int]], what: str = "output_size") -> tuple[int, int]:
    """``(h, w)`` from an int or a pair, both positive."""
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    if int(h) <= 0 or int(w) <= 0:
        raise ValueError(f"{what} must be positive, got {size!r}")
    return int(h), int(w)
