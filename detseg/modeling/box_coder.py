"""Box regression targets ``(dx, dy, dw, dh)`` as in R-CNN (Girshick et al. 2014, appendix C)."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

# exp(dw) is clamped so that a wild prediction cannot overflow: at most a 1000/16 scale-up.
DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16)


class BoxCoder:
    """Encode ground truth relative to reference boxes and decode predictions back.

    Args:
        weights: ``(wx, wy, ww, wh)`` multiplying the raw targets; (10, 10, 5, 5) for region
            heads, (1, 1, 1, 1) for the RPN (as in Faster R-CNN implementations).
        scale_clamp: upper bound on decoded ``dw``, ``dh`` before ``exp``.
    """

    def __init__(self, weights: Sequence[float] = (10.0, 10.0, 5.0, 5.0),
                 scale_clamp: float = DEFAULT_SCALE_CLAMP):
        self.weights = tuple(float(w) for w in weights)
        self.scale_clamp = scale_clamp

    def encode(self, reference: Tensor, gt: Tensor) -> Tensor:
        """reference, gt: ``Tensor[N, 4]`` xyxy → deltas ``Tensor[N, 4]``."""
        wx, wy, ww, wh = self.weights
        rw = reference[:, 2] - reference[:, 0]
        rh = reference[:, 3] - reference[:, 1]
        rx = reference[:, 0] + 0.5 * rw
        ry = reference[:, 1] + 0.5 * rh
        gw = gt[:, 2] - gt[:, 0]
        gh = gt[:, 3] - gt[:, 1]
        gx = gt[:, 0] + 0.5 * gw
        gy = gt[:, 1] + 0.5 * gh
        return torch.stack([wx * (gx - rx) / rw, wy * (gy - ry) / rh,
                            ww * torch.log(gw / rw), wh * torch.log(gh / rh)], dim=1)

    def decode(self, deltas: Tensor, reference: Tensor) -> Tensor:
        """deltas ``Tensor[N, 4k]`` (k boxes per reference), reference ``Tensor[N, 4]`` →
        boxes ``Tensor[N, 4k]`` xyxy."""
        reference = reference.to(deltas.dtype)
        wx, wy, ww, wh = self.weights
        rw = (reference[:, 2] - reference[:, 0])[:, None]
        rh = (reference[:, 3] - reference[:, 1])[:, None]
        rx = reference[:, 0, None] + 0.5 * rw
        ry = reference[:, 1, None] + 0.5 * rh
        dx, dy = deltas[:, 0::4] / wx, deltas[:, 1::4] / wy
        dw = (deltas[:, 2::4] / ww).clamp(max=self.scale_clamp)
        dh = (deltas[:, 3::4] / wh).clamp(max=self.scale_clamp)
        cx, cy = dx * rw + rx, dy * rh + ry
        w, h = torch.exp(dw) * rw, torch.exp(dh) * rh
        out = torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=2)
        return out.reshape(deltas.shape)
