"""Pluggable heads; each reads the shared backbone features and returns losses or predictions.

``HEAD_TYPES`` is the builder table: ``model.heads.<name>.type`` -> head class (its
``from_config`` builds it from the settings dataclass ``config_class``). A head of one's own is one
file with a ``Head`` subclass and its settings dataclass, and one ``register_head`` call.
"""
from ...config import register_head_config
from .base import INSTANCES, SEMANTIC, Head
from .fcn import FCNHead
from .rcnn import RCNNHead
from .region import RegionHead
from .sliding_window import SlidingWindowHead
from .spp import SPPHead

HEAD_TYPES: dict[str, type[Head]] = {
    "fcn": FCNHead,  # FCN-32s / 16s / 8s semantic segmentation
    "sliding_window": SlidingWindowHead,  # OverFeat-style convolutional window classifier
    "rcnn": RCNNHead,  # R-CNN: warped proposal crops through the backbone
    "region": SPPHead,  # SPPNet, Fast / Faster R-CNN, Mask R-CNN: pooled shared features
}


def register_head(type_name: str, cls: type[Head]) -> None:
    """Add a head type: ``model.heads.<name>: {type: type_name, ...}`` then builds ``cls``."""
    if not (isinstance(cls, type) and issubclass(cls, Head)) or cls.config_class is None:
        raise TypeError(f"{cls!r}: a head type is a Head subclass with a config_class")
    register_head_config(type_name, cls.config_class)
    HEAD_TYPES[type_name] = cls


def head_class(settings) -> type[Head]:
    """The class of the head that ``settings`` (a head config dataclass) describes."""
    if settings.type not in HEAD_TYPES:
        raise ValueError(f"unknown head type {settings.type!r}; registered: {', '.join(HEAD_TYPES)}")
    return HEAD_TYPES[settings.type]


__all__ = ["HEAD_TYPES", "INSTANCES", "SEMANTIC", "Head", "FCNHead", "RCNNHead", "RegionHead",
           "SlidingWindowHead", "SPPHead", "head_class", "register_head"]
