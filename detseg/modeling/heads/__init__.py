"""Pluggable heads; each reads the shared backbone features and returns losses or predictions.

``HEAD_TYPES`` is the builder table: ``model.heads.<name>.type`` -> head class (its
``from_config`` builds it from the settings dataclass ``config_class``, defined beside it). A head
of one's own is one file with a ``Head`` subclass and its settings dataclass, and one
``register_head`` call: the call that registers the built-in heads below.
"""
from ...config import register_head_config
from .base import CLASSES, INSTANCES, SEMANTIC, Head
from .classify import ClassifyHead, ClassifyHeadConfig
from .fcn import FCNHead, FCNHeadConfig
from .mask import MaskConfig, MaskHead
from .rcnn import RCNNHead, RCNNHeadConfig
from .region import ProposalHeadConfig, RegionHead, RegionHeadConfig, SampledRoIs
from .semantic_fpn import SemanticFPNHead, SemanticFPNHeadConfig
from .sliding_window import SlidingWindowHead, SlidingWindowHeadConfig

HEAD_TYPES: dict[str, type[Head]] = {}


def register_head(type_name: str, cls: type[Head]) -> None:
    """Add a head type: ``model.heads.<name>: {type: type_name, ...}`` then builds ``cls``."""
    if not (isinstance(cls, type) and issubclass(cls, Head)) or cls.config_class is None:
        raise TypeError(f"{cls!r}: a head type is a Head subclass with a config_class")
    register_head_config(type_name, cls.config_class)
    HEAD_TYPES[type_name] = cls


register_head("classify", ClassifyHead)  # image classification: LeNet to DenseNet
register_head("fcn", FCNHead)  # FCN-32s / 16s / 8s semantic segmentation
register_head("sliding_window", SlidingWindowHead)  # OverFeat-style convolutional window classifier
register_head("rcnn", RCNNHead)  # R-CNN: warped proposal crops through the backbone
register_head("region", RegionHead)  # SPPNet, Fast / Faster R-CNN, Mask R-CNN: pooled shared features
register_head("semantic_fpn", SemanticFPNHead)  # Panoptic FPN's semantic branch


def head_class(settings) -> type[Head]:
    """The class of the head that ``settings`` (a head config dataclass) describes."""
    if settings.type not in HEAD_TYPES:
        raise ValueError(f"unknown head type {settings.type!r}; registered: {', '.join(HEAD_TYPES)}")
    return HEAD_TYPES[settings.type]


__all__ = ["HEAD_TYPES", "CLASSES", "INSTANCES", "SEMANTIC", "Head", "ClassifyHead", "ClassifyHeadConfig",
           "FCNHead", "FCNHeadConfig", "MaskConfig",
           "MaskHead", "ProposalHeadConfig", "RCNNHead", "RCNNHeadConfig", "RegionHead",
           "RegionHeadConfig", "SampledRoIs", "SemanticFPNHead", "SemanticFPNHeadConfig",
           "SlidingWindowHead", "SlidingWindowHeadConfig",
           "head_class", "register_head"]
