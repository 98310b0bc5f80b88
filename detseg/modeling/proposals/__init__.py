"""Proposal sources. Each is a module whose ``forward(features, batch)`` returns
``(proposals: list of Tensor[P_i, 4] xyxy in the batch's resized-image pixels, losses: dict)``.

- ``SelectiveSearchProposals``: selective search, cached per dataset by ``tools/proposals.py``;
- ``DenseWindowProposals``: dense multi-scale sliding windows;
- ``RPN``: a region proposal network, trained jointly with the region head it feeds.
"""
from .precomputed import SelectiveSearchProposals
from .rpn import RPN
from .windows import DenseWindowProposals, dense_windows

__all__ = ["SelectiveSearchProposals", "RPN",
           "DenseWindowProposals", "dense_windows"]
