"""Where the region methods look: selective search's proposals (R-CNN, SPPNet, Fast R-CNN) and a
trained RPN's (Faster R-CNN) on the same image, with their recall of the ground truth."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn
from torchvision.ops import box_iou

from ..modeling.proposals.rpn import RPN
from ..modeling.proposals.selective_search import selective_search


def recall_at(proposals: torch.Tensor, gt: torch.Tensor, counts: Sequence[int] = (10, 100, 300, 1000),
              iou: float = 0.5) -> dict[int, float]:
    """``{n: share of the ground-truth boxes that one of the first n proposals covers at IoU >= iou}``
    (``proposals`` ``[P, 4]`` best first, ``gt`` ``[G, 4]``, same pixels); NaN without ground truth."""
    out = {}
    for n in counts:
        if not len(gt):
            out[n] = float("nan")
            continue
        top = proposals[:n].float()
        out[n] = 0.0 if not len(top) else float((box_iou(gt.float(), top).amax(1) >= iou).float().mean())
    return out


def rpn_of(model: nn.Module) -> Optional[tuple[str, RPN]]:
    """(head name, RPN) of the first head whose proposals come from an RPN, else None."""
    for name, head in model.heads.items():
        rpn = getattr(head, "proposals", None)
        if isinstance(rpn, RPN):
            return name, rpn
    return None


@torch.no_grad()
def rpn_proposals(model: nn.Module, batch) -> torch.Tensor:
    """The RPN's proposals (best first) on the batch's first image, in the network input's pixels."""
    found = rpn_of(model)
    if found is None:
        raise ValueError("this model has no RPN (its region heads read selective-search or stored proposals)")
    model.eval()
    features = model.backbone(model.preprocess(batch.images))
    proposals, _ = found[1](features, batch.replace(pixels=None))
    return proposals[0].cpu()


def search_proposals(image: np.ndarray, mode: str = "fast", max_proposals: int = 2000) -> torch.Tensor:
    """Selective search (``[P, 4]``, OpenCV's ranking) on an RGB uint8 image."""
    return torch.from_numpy(selective_search(image, mode=mode, max_proposals=max_proposals))
