"""Proposal sources. Each is a module whose ``forward(features, batch)`` returns
``(proposals: list of Tensor[P_i, 4] xyxy in the batch's resized-image pixels, losses: dict)``.

- ``SelectiveSearchProposals``: selective search, cached per dataset by ``tools/proposals.py``;
- ``DenseWindowProposals``: dense multi-scale sliding windows;
- ``RPN``: a region proposal network, trained jointly with the region head it feeds.
"""
from dataclasses import dataclass, field
from typing import Literal, Optional

from ...config import ranged

from .precomputed import SelectiveSearchProposals
from .rpn import RPN
from .windows import DenseWindowProposals, dense_windows

__all__ = ["build_proposals", "ProposalConfig", "SelectiveSearchProposals", "RPN",
           "DenseWindowProposals", "dense_windows"]


@dataclass
class ProposalConfig:
    """Where a region head gets its proposals: selective search, dense windows or an RPN."""

    source: Literal["selective_search", "windows", "rpn"] = "rpn"
    # selective search: cached per split by tools/proposals.py (default file: beside the
    # split's annotation file); computed on the fly for images without a cache (inference)
    mode: Literal["fast", "quality"] = "fast"
    max_per_image: int = 2000
    train_file: Optional[str] = None
    val_file: Optional[str] = None
    # dense windows
    window_sizes: list[float] = field(default_factory=lambda: [32.0, 64.0, 128.0])
    window_ratios: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    window_stride: int = 16
    # RPN (Faster R-CNN); features default to the region head's feature map
    rpn_features: Optional[list[str]] = None
    anchor_sizes: list[list[float]] = field(default_factory=lambda: [[32.0, 64.0, 128.0]])
    aspect_ratios: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    pre_nms_top_n: list[int] = field(default_factory=lambda: [2000, 1000])  # train, test
    post_nms_top_n: list[int] = field(default_factory=lambda: [2000, 1000])  # train, test
    nms_thresh: float = 0.7
    batch_size_per_image: int = 256
    positive_fraction: float = 0.5
    fg_iou: float = 0.7
    bg_iou: float = 0.3
    min_size: float = 1e-3  # RPN: proposals smaller than this (pixels) are dropped
    score_thresh: float = 0.0  # RPN, test time: proposals scoring lower are dropped
    # RPN objectness loss: binary cross-entropy, or focal (Lin et al. 2017) with exponent
    # rpn_focal_gamma, which lets the easy background anchors count less
    rpn_loss: Literal["bce", "focal"] = "bce"
    rpn_focal_gamma: float = ranged(2.0, ge=0)


def build_proposals(p, in_shapes: dict, feature: str):
    """The proposal source a head's ``ProposalConfig`` ``p`` describes, for a head on ``feature``
    (``in_shapes``: ``backbone.output_shape()``)."""
    if p.source == "selective_search":
        return SelectiveSearchProposals(mode=p.mode, max_per_image=p.max_per_image)
    if p.source == "windows":
        return DenseWindowProposals(sizes=p.window_sizes, aspect_ratios=p.window_ratios,
                                    stride=p.window_stride)
    names = p.rpn_features or [feature]
    unknown = [n for n in names if n not in in_shapes]
    if unknown:
        raise ValueError(f"proposals.rpn_features: backbone has no {unknown}; it has {sorted(in_shapes)}")
    if len(p.anchor_sizes) != len(names):
        raise ValueError(f"proposals.anchor_sizes needs one list per RPN feature map "
                         f"({len(names)}), got {len(p.anchor_sizes)}")
    channels = {in_shapes[n].channels for n in names}
    if len(channels) != 1:
        raise ValueError(f"RPN feature maps {names} differ in channels {channels}; use an FPN")
    return RPN(in_channels=channels.pop(), features=names, strides=[in_shapes[n].stride for n in names],
               anchor_sizes=p.anchor_sizes, aspect_ratios=p.aspect_ratios,
               pre_nms_top_n=tuple(p.pre_nms_top_n), post_nms_top_n=tuple(p.post_nms_top_n),
               nms_thresh=p.nms_thresh, fg_iou=p.fg_iou, bg_iou=p.bg_iou,
               batch_size_per_image=p.batch_size_per_image, positive_fraction=p.positive_fraction,
               min_size=p.min_size, score_thresh=p.score_thresh, rpn_loss=p.rpn_loss,
               rpn_focal_gamma=p.rpn_focal_gamma)
