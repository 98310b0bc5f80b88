"""Pluggable heads; each reads the shared backbone features and returns losses or predictions."""
from .fcn import FCNHead
from .rcnn import RCNNHead
from .region import RegionHead
from .sliding_window import SlidingWindowHead
from .spp import SPPHead

__all__ = ["FCNHead", "RCNNHead", "RegionHead", "SlidingWindowHead", "SPPHead"]
