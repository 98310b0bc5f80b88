"""The sliding-window head's class scores over the image: every window of every shape scored
(convolutionally, as the head does), shown per class as a map of the best window centred at each
place."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..modeling.heads.sliding_window import SlidingWindowHead
from .features import head_of_type


def sliding_window_head(model: nn.Module, head: Optional[str] = None) -> tuple[str, SlidingWindowHead]:
    """(name, head) of the model's sliding-window head (``head`` names one)."""
    return head_of_type(model, SlidingWindowHead, head, "windows")


@torch.no_grad()
def window_score_maps(model: nn.Module, batch, head: Optional[str] = None,
                      cell: int = 8) -> tuple[torch.Tensor, int]:
    """Per class, the highest probability of any window whose centre falls in each ``cell x cell``
    block of the batch's first image.

    Returns:
        (``Tensor[K, ceil(h / cell), ceil(w / cell)]`` in [0, 1], number of windows scored).
    """
    _, sw = sliding_window_head(model, head)
    model.eval()
    batch = batch.replace(pixels=model.preprocess(batch.images))
    boxes, out = sw.score_windows(batch, model.backbone)[0]
    k = sw.num_classes
    probs = F.softmax(out[:, : k + 1].float(), dim=1)[:, :k]  # background last
    h, w = batch.image_sizes[0]
    gh, gw = -(-h // cell), -(-w // cell)
    cx = ((boxes[:, 0] + boxes[:, 2]) / 2 / cell).floor().long().clamp(0, gw - 1)
    cy = ((boxes[:, 1] + boxes[:, 3]) / 2 / cell).floor().long().clamp(0, gh - 1)
    flat = (cy * gw + cx).cpu()
    maps = torch.zeros(k, gh * gw)
    if len(flat):
        maps = maps.scatter_reduce(1, flat[None].expand(k, -1), probs.t().cpu(), reduce="amax",
                                   include_self=True)
    return maps.view(k, gh, gw), int(boxes.shape[0])
