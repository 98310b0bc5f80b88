"""Typed configuration: dataclass schema, YAML files with ``_base_`` inheritance, ``a.b=c`` overrides.

A config is built in three steps, each of which remembers where every key came from so that an
error can name both the key and the file (or the command line) that set it:

1. ``load_yaml_tree(path)`` reads a YAML file with ``yaml.safe_load`` and merges its ``_base_``
   files under it (depth <= 2: a leaf may have bases, a base may have bases, no deeper).
2. ``apply_overrides(tree, ["solver.lr=0.01", ...])`` merges command-line overrides.
3. ``from_dict(Config, tree)`` checks every key and value against the dataclass schema.

``load_config(path, overrides)`` does all three.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

import yaml


class ConfigError(ValueError):
    """A config key or value is wrong; the message names the key and where it came from."""


def ranged(default: Any, *, ge: Optional[float] = None, gt: Optional[float] = None,
           le: Optional[float] = None) -> Any:
    """A dataclass field with ``default`` whose value (each element, for a list; unchecked when
    None) must be >= ``ge`` / > ``gt`` / <= ``le``: checked when the config loads, so a bad value
    is one line naming the key, not an error deep inside torch."""
    meta = {"range": (ge, gt, le)}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


# --------------------------------------------------------------------------- schema


@dataclass
class BackboneConfig:
    name: Literal["vgg16", "resnet18", "resnet50", "googlenet", "densenet121"] = "resnet18"
    # None: random init; "DEFAULT"/"IMAGENET1K_V1": torchvision weights enum (needs network);
    # any other string: a local .pth / .safetensors file.
    weights: Optional[str] = None
    freeze_at: int = 0
    norm: Literal["bn", "frozen_bn"] = "bn"
    fpn: bool = False
    fpn_channels: int = 256
    out_features: Optional[list[str]] = None  # stages to return (default c3, c4, c5)
    fpn_extra_pool: bool = False  # one more FPN level, max-pooled from the top (Mask R-CNN's "pool")


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


@dataclass
class MaskConfig:
    """Mask R-CNN's mask branch on a region head's positive RoIs."""

    feature: Optional[str] = None  # default: the stride-16 map
    pooler_resolution: int = 14
    sampling_ratio: int = 2
    conv_dims: list[int] = field(default_factory=lambda: [256, 256, 256, 256])
    multiscale_features: Optional[list[str]] = None  # FPN levels chosen by box size, instead
    # training: at most this many of an image's positive RoIs feed the mask loss, drawn at random
    # (the tower's cost grows with them); null: all of them, as in the paper
    rois_per_image: Optional[int] = ranged(None, ge=1)


# Heads: ``model.heads`` maps an instance name to one of these, picked by its ``type``. A head type
# of one's own registers its dataclass here (``register_head_config``; modeling's
# ``register_head`` does it together with the head class).


@dataclass
class FCNHeadConfig:
    """FCN semantic segmentation (``type: fcn``)."""

    type: Literal["fcn"] = "fcn"
    variant: Literal["32s", "16s", "8s"] = "8s"
    # "bn": BatchNorm after the 3x3 conv on the top feature, as torchvision's FCNHead has;
    # "none": the paper's head
    head_norm: Literal["none", "bn"] = "none"
    # training only: weight of an auxiliary classifier's loss on the stride-16 feature
    # (torchvision's ``aux_loss``, PSPNet's deep supervision); 0 = no auxiliary classifier
    aux_weight: float = ranged(0.0, ge=0)
    # share of labelled pixels in the batch that the loss averages over, the hardest (highest
    # loss) first: DeepLab's hard pixel mining (detectron2's ``top_k_percent_pixels``); 1 = all
    # (from scratch on the shapes recipe 0.2 collapsed: mIoU 0.17 after 2000 iterations, vs 0.71)
    top_k_pixels: float = ranged(1.0, gt=0, le=1)


@dataclass
class SlidingWindowHeadConfig:
    """A window classifier slid over the image convolutionally, OverFeat-style (``type: sliding_window``)."""

    type: Literal["sliding_window"] = "sliding_window"
    feature: Optional[str] = None  # default: the stride-16 map
    window_sizes: list[float] = field(default_factory=lambda: [32.0, 64.0, 128.0])
    aspect_ratios: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    scales: list[int] = field(default_factory=lambda: [1])  # multiples sharing a base classifier
    reduce: int = 64
    hidden: int = 256
    mode: Literal["conv", "naive"] = "conv"
    fg_iou: float = 0.5
    bg_iou: float = 0.4
    batch_size_per_image: int = 256
    fg_fraction: float = 0.25
    hard_negative_fraction: float = 0.0  # share of background windows mined as the hardest
    # Pixels of image context around the image that the backbone sees (mean-pixel padding): None =
    # the feature's receptive field, so that "naive" and "conv" give the same scores; less is
    # cheaper (the padded image is smaller) and border windows then see the network's own padding.
    context_margin: Optional[int] = ranged(None, ge=0)
    score_thresh: float = 0.05
    nms_thresh: float = 0.5
    detections_per_image: int = 100


@dataclass
class _ProposalHeadConfig:
    """What the two proposal-based heads share: proposals, fc layers, sampling, test-time filtering."""

    feature: Optional[str] = None  # backbone map to read (default: the coarsest)
    proposals: ProposalConfig = field(default_factory=ProposalConfig)
    fc_dims: list[int] = field(default_factory=lambda: [1024, 1024])
    dropout: float = 0.0
    batch_size_per_image: int = 128
    fg_fraction: float = 0.25
    fg_iou: float = 0.5
    bg_iou: float = 0.5
    bg_iou_low: float = 0.0
    reg_iou: Optional[float] = None  # proposals training the box regressor (default fg_iou)
    min_box_size: float = 0.0  # test time: smaller boxes are dropped
    classifier: Literal["softmax", "svm"] = "softmax"
    svm_neg_iou: float = 0.3
    score_thresh: float = 0.05
    nms_thresh: float = 0.5
    detections_per_image: int = 100


@dataclass
class RCNNHeadConfig(_ProposalHeadConfig):
    """R-CNN (``type: rcnn``): each proposal warped to a fixed size and run through the backbone."""

    type: Literal["rcnn"] = "rcnn"
    warp_size: int = 224
    context_pad: int = 16
    pool_size: int = 6


@dataclass
class RegionHeadConfig(_ProposalHeadConfig):
    """A region head on the shared features (``type: region``): SPPNet, Fast / Faster R-CNN, and
    Mask R-CNN with ``mask`` set."""

    type: Literal["region"] = "region"
    # spp: the pyramid of `levels`; roi_pool: levels[0] with Fast R-CNN's rounding; roi_align:
    # bilinear levels[0] x levels[0] (from `feature`, or from multiscale_features, which imply it)
    pooler: Literal["spp", "roi_pool", "roi_align"] = "spp"
    levels: list[int] = field(default_factory=lambda: [6, 3, 2, 1])  # spp; [7] = Fast R-CNN
    mapping: Literal["sppnet", "fast_rcnn"] = "sppnet"
    aligned: bool = False  # roi_align: half-pixel shift (Detectron2's ROIAlignV2)
    # pool each box from one of these FPN levels by its size (RoIAlign at levels[0]) instead
    multiscale_features: Optional[list[str]] = None
    sampling_ratio: int = 2
    mask: Optional[MaskConfig] = None  # Mask R-CNN's mask branch; null: boxes only


HEAD_CONFIGS: dict[str, type] = {"fcn": FCNHeadConfig, "sliding_window": SlidingWindowHeadConfig,
                                 "rcnn": RCNNHeadConfig, "region": RegionHeadConfig}


def register_head_config(type_name: str, cls: type) -> None:
    """Make ``model.heads.<name>: {type: type_name, ...}`` read into dataclass ``cls``."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if "type" not in fields or fields["type"].default != type_name:
        raise TypeError(f"{cls.__name__} needs a field `type` defaulting to {type_name!r}")
    HEAD_CONFIGS[type_name] = cls


class HeadConfig:
    """Schema marker for one head's settings: the dataclass of ``HEAD_CONFIGS[type]``."""


@dataclass
class PanopticConfig:
    """Merge a semantic head's map with a mask head's instances (needs both)."""

    enabled: bool = False
    instance_score: float = 0.5  # instances below this score are left out
    overlap: float = 0.5  # an instance mostly hidden by higher-scoring ones is dropped
    min_area: int = 64  # leftover semantic regions smaller than this (pixels) are dropped


@dataclass
class ModelConfig:
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    # instance name -> head settings with a `type` (fcn, sliding_window, rcnn, region)
    heads: dict[str, HeadConfig] = field(default_factory=lambda: {"seg": FCNHeadConfig()})
    panoptic: PanopticConfig = field(default_factory=PanopticConfig)
    # "model": images reach the model at their own size and are normalised, then resized with
    # bilinear interpolation to data.min_size_test / data.max_size inside it (torchvision's
    # detection transform; inference only), instead of being resized by the data pipeline.
    input_resize: Literal["data", "model"] = "data"
    # Normalisation applied inside the model so that data stays uint8 until the last moment.
    pixel_mean: list[float] = field(default_factory=lambda: [123.675, 116.28, 103.53])
    pixel_std: list[float] = field(default_factory=lambda: [58.395, 57.12, 57.375])
    # Fine-tuning: start from the tensors of this file that fit (a detseg checkpoint, e.g. a
    # converted torchvision COCO detector, or a plain .pth / .safetensors state dict); class rows
    # move by class name (case-insensitive). Optimizer, schedule and iteration start fresh.
    init_from: Optional[str] = None
    # {dataset class: the init_from file's class} for classes whose names differ
    init_class_map: dict[str, str] = field(default_factory=dict)


@dataclass
class SplitConfig:
    ann_file: Optional[str] = None
    image_dir: Optional[str] = None


@dataclass
class ShapesConfig:
    """The built-in synthetic dataset used when no ``data.train.ann_file`` is set."""

    seed: int = 0
    num_train: int = ranged(300, ge=1)
    num_val: int = ranged(60, ge=0)
    cache_dir: Optional[str] = None
    # Which shapes to draw (detseg.data.shapes.VOCABULARY); None: circle, rectangle, triangle, hexagon
    classes: Optional[list[str]] = None


@dataclass
class DataConfig:
    train: SplitConfig = field(default_factory=SplitConfig)
    val: SplitConfig = field(default_factory=SplitConfig)
    shapes: ShapesConfig = field(default_factory=ShapesConfig)
    batch_size: int = ranged(8, ge=1)
    num_workers: int = ranged(2, ge=0)
    # Train resize: shortest edge picked at random from min_size_train, capped by max_size.
    min_size_train: list[int] = ranged([112, 128, 144], ge=16)
    min_size_test: int = ranged(128, ge=16)
    max_size: int = ranged(288, ge=16)
    # default: flip, scale and shift, colour jitter, blur or noise; flip: a horizontal flip only
    # (detectron2's default); none: only the resize
    augment: Literal["default", "flip", "none"] = "default"
    keep_empty: bool = True
    sampler: Literal["random", "repeat_factor"] = "random"
    repeat_threshold: float = 0.001
    on_bad_image: Literal["error", "skip"] = "error"
    # keep decoded images and annotations in memory after their first read (small datasets: the
    # decoded size, once per loader worker); saves the PNG/JPEG decode and mask rasterising
    cache: bool = False


@dataclass
class FreezeConfig:
    """Parts of the model kept frozen for the first ``iters`` iterations, then trained."""

    # backbone, fpn, rpn, heads, mask, a head's name, or a module path such as heads.det.fc
    parts: list[str] = field(default_factory=list)
    iters: int = ranged(0, ge=0)


@dataclass
class SolverConfig:
    optimizer: Literal["sgd", "adamw"] = "adamw"
    lr: float = ranged(0.002, gt=0)
    momentum: float = ranged(0.9, ge=0, le=1)
    weight_decay: float = ranged(1e-4, ge=0)
    max_iter: int = ranged(1700, ge=1)
    warmup_iters: int = ranged(100, ge=0)
    warmup_factor: float = ranged(0.001, gt=0, le=1)
    schedule: Literal["step", "cosine", "constant"] = "cosine"
    steps: list[int] = field(default_factory=list)
    gamma: float = 0.1
    plateau: bool = False
    plateau_patience: int = 2
    plateau_factor: float = 0.1
    clip_grad_norm: Optional[float] = ranged(10.0, gt=0)
    # Mixed precision: autocast in amp_dtype ("auto": float16 with a GradScaler on CUDA,
    # bfloat16 on CPU, where oneDNN runs bf16 convolutions ~1.4x faster on AVX512-BF16/AMX cores)
    amp: bool = False
    amp_dtype: Literal["auto", "float16", "bfloat16"] = "auto"
    channels_last: bool = True
    checkpoint_period: int = ranged(425, ge=1)
    keep_last: int = ranged(3, ge=1)  # model_<iter>.pth files kept (best.pth besides)
    eval_period: int = ranged(425, ge=1)
    best_metric: str = "mIoU"
    best_mode: Literal["max", "min"] = "max"
    patience: Optional[int] = ranged(None, ge=1)
    log_period: int = ranged(10, ge=1)
    freeze: FreezeConfig = field(default_factory=FreezeConfig)


@dataclass
class RuntimeConfig:
    seed: int = 0
    device: str = "auto"
    output_dir: Optional[str] = None
    deterministic: bool = False


@dataclass
class EvaluatorConfig:
    # COCO AP through pycocotools, or faster-coco-eval (same numbers, faster)
    backend: Literal["pycocotools", "faster_coco_eval"] = "pycocotools"
    # confusion matrices, PR and F1 curves (metrics.json, diagnostics/*.png), detections counted
    # from this score up in the confusion matrix and the P / R / F1 "at threshold" figures
    diagnostics: bool = True
    score_threshold: float = ranged(0.5, ge=0, le=1)
    # the training losses on the val split, at each evaluation (val_loss, drawn in curves.png)
    val_loss: bool = True


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    evaluator: EvaluatorConfig = field(default_factory=EvaluatorConfig)


# --------------------------------------------------------------------------- YAML loading

# Maps a dotted key ("solver.lr") to the file or "command line" that set it.
Sources = dict[str, str]

MAX_BASE_DEPTH = 2


class _UniqueKeySafeLoader(yaml.SafeLoader):
    """``yaml.safe_load``'s loader (plain data only, no Python objects) that refuses a key given
    twice in one mapping. YAML itself keeps the last one silently: a recipe with two ``data:``
    blocks lost its ``data.shapes`` setting that way and trained on other data without a word.
    Keys brought in by a ``<<`` merge may still be overridden, as YAML intends."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: SafeLoader reports it below
                    continue
                if first is not None:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping", node.start_mark,
                        f"found key {key!r} twice (first on line {first + 1})", key_node.start_mark)
                seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


# No config comes near this many values once YAML aliases are expanded; a file that does is an
# alias bomb ("billion laughs": nine anchors of nine aliases each are 9**9 values), which the
# walks over the config (sources, merge, schema) would expand until memory runs out.
MAX_CONFIG_VALUES = 100_000


def check_expanded_size(data: Any, where: str) -> None:
    """Raise ``ConfigError`` when ``data`` would hold more than ``MAX_CONFIG_VALUES`` values with
    its shared (aliased) parts expanded; counted once per distinct object, so in linear time."""
    sizes: dict[int, int] = {}

    def size(obj: Any) -> int:
        if not isinstance(obj, (dict, list)):
            return 1
        if id(obj) in sizes:
            return sizes[id(obj)]
        sizes[id(obj)] = MAX_CONFIG_VALUES + 1  # a cycle (a YAML alias to its own parent)
        items = obj.items() if isinstance(obj, dict) else enumerate(obj)
        total = 1
        for _, value in items:
            total += size(value)
            if total > MAX_CONFIG_VALUES:
                break
        sizes[id(obj)] = total
        return total
    if size(data) > MAX_CONFIG_VALUES:
        raise ConfigError(f"{where}: expands to more than {MAX_CONFIG_VALUES} values through YAML "
                          f"aliases (an alias bomb?); write the values out")


def _read_yaml(path: str) -> dict:
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    with open(path, encoding="utf-8") as f:
        try:
            data = yaml.load(f, Loader=_UniqueKeySafeLoader)  # safe: a SafeLoader subclass
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        except ValueError as e:  # int() past Python's digit limit, a date out of range
            raise ConfigError(f"{path}: a value YAML cannot read: {str(e).splitlines()[0]}") from None
    check_expanded_size(data, path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def _record_sources(tree: dict, source: str, sources: Sources, prefix: str = "") -> None:
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        sources[dotted] = source
        if isinstance(value, dict):
            _record_sources(value, source, sources, dotted + ".")


def _merge(base: dict, update: dict) -> dict:
    """Recursive merge; mappings merge key by key, anything else in ``update`` replaces."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_yaml_tree(path: str, _depth: int = 0) -> tuple[dict, Sources]:
    """Read ``path`` and its ``_base_`` files (relative to ``path``) into one merged mapping.

    Returns:
        (tree, sources): the merged mapping and, per dotted key, the file that set it.
    """
    data = _read_yaml(path)
    bases = data.pop("_base_", [])
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: _base_ must be a file name or a list of file names")
    if bases and _depth >= MAX_BASE_DEPTH:
        raise ConfigError(
            f"{path}: _base_ nesting deeper than {MAX_BASE_DEPTH} levels; flatten the config chain"
        )
    tree: dict = {}
    sources: Sources = {}
    for base in bases:
        base_path = os.path.normpath(os.path.join(os.path.dirname(path), base))
        base_tree, base_sources = load_yaml_tree(base_path, _depth + 1)
        tree = _merge(tree, base_tree)
        sources.update(base_sources)
    tree = _merge(tree, data)
    _record_sources(data, path, sources)
    return tree, sources


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``"a.b=value"`` into (["a", "b"], parsed value); the value is read as YAML scalar."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key.sub=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    except ValueError as e:  # int() past Python's digit limit: no setting takes such a number
        raise ConfigError(f"override {key}: a value YAML cannot read ({str(e).splitlines()[0]})") from None
    check_expanded_size(value, f"override {key}")
    return key.split("."), value


def apply_overrides(tree: dict, sources: Sources, overrides: list[str]) -> dict:
    """Merge ``key.sub=value`` strings into ``tree``; the schema check happens in ``from_dict``."""
    tree = _merge({}, tree)
    for text in overrides:
        parts, value = parse_override(text)
        node = tree
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[parts[-1]] = value
        sources[".".join(parts)] = "command line"
    return tree


# --------------------------------------------------------------------------- schema checking


def _where(key: str, sources: Sources) -> str:
    # A key that a file did not set directly inherits the source of its nearest set parent.
    probe = key
    while probe:
        if probe in sources:
            return sources[probe]
        probe = probe.rpartition(".")[0]
    return "defaults"


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        (inner,) = typing.get_args(tp)
        return f"list of {_type_name(inner)}"
    if origin is dict:
        return f"mapping of name to {_type_name(typing.get_args(tp)[1])}"
    if tp is HeadConfig:
        return "head settings with a `type`"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str, sources: Sources) -> Any:
    """Return ``value`` checked against type ``tp`` (ints are accepted for floats)."""

    def fail() -> ConfigError:
        return ConfigError(
            f"config key '{key}' (from {_where(key, sources)}): expected {_type_name(tp)}, "
            f"got {value!r}"
        )

    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise fail()
        return _build(tp, value, key + ".", sources)
    if origin is dict:
        _, inner = typing.get_args(tp)
        if not isinstance(value, dict):
            raise fail()
        if inner is HeadConfig:  # the name is the mapping's key (it may hold a dot: an error)
            if not value:
                raise ConfigError(f"config key '{key}' (from {_where(key, sources)}): a model needs at "
                                  f"least one head")
            return {str(k): _head_config(v, f"{key}.{k}", sources, str(k)) for k, v in value.items()}
        return {str(k): _coerce(v, inner, f"{key}.{k}", sources) for k, v in value.items()}
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise fail()
        return value
    if origin in (typing.Union, types.UnionType):
        classes = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
        if isinstance(value, dict) and len(classes) == 1:  # Optional[Section]: its own messages
            return _coerce(value, classes[0], key, sources)
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option, key, sources)
            except ConfigError:
                continue
        raise fail()
    if origin is list:
        (inner,) = typing.get_args(tp)
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise fail()
        return [_coerce(v, inner, f"{key}[{i}]", sources) for i, v in enumerate(value)]
    if tp is type(None):
        if value is not None:
            raise fail()
        return None
    if tp is bool:
        if not isinstance(value, bool):
            raise fail()
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail()
        return value
    if tp is float:
        if isinstance(value, str):
            # PyYAML (YAML 1.1) reads "1e-3" as a string; accept what Python reads as a number.
            try:
                return float(value)
            except ValueError:
                raise fail() from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise fail()
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise fail()
        return value
    raise TypeError(f"unsupported config type {tp!r} for {key}")


HEAD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
RESERVED_HEAD_NAMES = ("loss", "panoptic")


def _head_config(value: Any, key: str, sources: Sources, name: str) -> Any:
    """One ``model.heads.<name>`` entry: the dataclass its ``type`` names."""
    if not HEAD_NAME.fullmatch(name) or name in RESERVED_HEAD_NAMES:
        raise ConfigError(f"config key '{key}' (from {_where(key, sources)}): a head name must be a "
                          f"Python identifier other than {', '.join(RESERVED_HEAD_NAMES)}")
    types_known = ", ".join(repr(t) for t in HEAD_CONFIGS)
    if not isinstance(value, dict) or "type" not in value:
        raise ConfigError(f"config key '{key}' (from {_where(key, sources)}): a head needs settings "
                          f"with a `type`, one of {types_known}; got {value!r}")
    cls = HEAD_CONFIGS.get(value["type"])
    if cls is None:
        raise ConfigError(f"config key '{key}.type' (from {_where(key + '.type', sources)}): unknown head "
                          f"type {value['type']!r}; one of {types_known}")
    return _build(cls, value, key + ".", sources)


def _build(cls: type, data: dict, prefix: str, sources: Sources) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            full = prefix + str(key)
            raise ConfigError(
                f"unknown config key '{full}' (from {_where(full, sources)}); "
                f"valid keys under '{prefix.rstrip('.') or '<root>'}': {', '.join(sorted(names))}"
            )
    kwargs = {k: _coerce(v, hints[k], prefix + k, sources) for k, v in data.items()}
    for f in dataclasses.fields(cls):
        if f.name in kwargs and "range" in f.metadata:
            _check_range(kwargs[f.name], f.metadata["range"], prefix + f.name, sources)
    return cls(**kwargs)


def _check_range(value: Any, bounds: tuple, key: str, sources: Sources) -> None:
    ge, gt, le = bounds
    for v in value if isinstance(value, list) else [value]:
        if v is None:
            continue
        bad = (v != v or (ge is not None and v < ge) or (gt is not None and v <= gt)
               or (le is not None and v > le))  # v != v: NaN
        if bad:
            need = " and ".join(t for t in (f">= {ge}" if ge is not None else "",
                                            f"> {gt}" if gt is not None else "",
                                            f"<= {le}" if le is not None else "") if t)
            raise ConfigError(f"config key '{key}' (from {_where(key, sources)}): must be {need}, got {v!r}")


def from_dict(data: dict, sources: Optional[Sources] = None, cls: type = Config) -> Any:
    """Build and check a config dataclass from a plain mapping (the old head layout upgraded)."""
    sources = {} if sources is None else sources
    if cls is Config:
        data = upgrade_legacy_heads(data, sources)
    return _build(cls, data, "", sources)


def to_dict(cfg: Any) -> dict:
    """Plain-Python (YAML- and checkpoint-safe) form of a config."""
    return dataclasses.asdict(cfg)


def to_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def load_config(path: Optional[str] = None, overrides: Optional[list[str]] = None) -> Config:
    """Load a config file (or the defaults when ``path`` is None) and apply overrides.

    Raises:
        ConfigError: naming the key and the file (or "command line") for any unknown key or
            wrongly typed value.
    """
    tree, sources = load_yaml_tree(path) if path else ({}, {})
    tree = apply_overrides(tree, sources, list(overrides or []))
    return from_dict(tree, sources)


# --------------------------------------------------------------------------- the old head layout

# Before heads were named by type, ``model.heads`` was a list of head names and each head type
# read a shared section: ``heads: [spp]`` with ``roi``, ``proposals``, ``mask`` (``enabled``), ``fcn``
# and ``sliding_window``. Configs and checkpoints written that way still load: each old name
# becomes a head of that name (so checkpoint keys ``heads.spp.*`` still fit) with its sections.
LEGACY_TYPES = {"fcn": "fcn", "sliding_window": "sliding_window", "rcnn": "rcnn", "spp": "region"}
LEGACY_SECTIONS = ("fcn", "sliding_window", "roi", "proposals", "mask")
_logger = logging.getLogger(__name__)


def _legacy_head(type_name: str, sections: dict, where: str) -> dict:
    """The settings of one head of ``type_name`` from the old shared sections."""
    cls = HEAD_CONFIGS[type_name]
    fields = {f.name for f in dataclasses.fields(cls)}
    head: dict = {}
    section = {"fcn": "fcn", "sliding_window": "sliding_window"}.get(type_name, "roi")
    head.update({k: v for k, v in (sections.get(section) or {}).items() if k in fields})
    if "proposals" in fields and "proposals" in sections:
        head["proposals"] = sections["proposals"]
    mask = dict(sections.get("mask") or {})
    if mask.pop("enabled", False) and type_name in ("region", "rcnn"):
        if "mask" not in fields:
            raise ConfigError(f"config key 'model.mask' (from {where}): the mask branch needs a region "
                              f"head on shared features (type: region), not {type_name}")
        head["mask"] = mask
    return {**head, "type": type_name}


def upgrade_legacy_heads(tree: dict, sources: Sources) -> dict:
    """``tree`` with the old head layout (see ``LEGACY_TYPES``) rewritten into ``model.heads``;
    logs one line when it rewrote anything."""
    model = tree.get("model")
    if not isinstance(model, dict):
        return tree
    heads = model.get("heads")
    sections = {k: model[k] for k in LEGACY_SECTIONS if k in model}
    if not isinstance(heads, list) and not sections:
        return tree
    where = _where("model.heads" if isinstance(heads, list) else f"model.{next(iter(sections))}", sources)
    for name, value in sections.items():
        if not isinstance(value, dict):
            raise ConfigError(f"config key 'model.{name}' (from {_where('model.' + name, sources)}): "
                              f"expected a mapping, got {value!r}")
    if isinstance(heads, list) or heads is None:
        names = ["fcn"] if heads is None else heads  # the old default: one FCN head
        new = {}
        for name in names:
            if name not in LEGACY_TYPES:
                raise ConfigError(f"config key 'model.heads' (from {where}): unknown head {name!r}; "
                                  f"one of {', '.join(LEGACY_TYPES)} (old layout) or a mapping of "
                                  f"name to settings with a `type`")
            new[name] = _legacy_head(LEGACY_TYPES[name], sections, where)
    elif isinstance(heads, dict):  # the new layout, with old sections (say, overrides) on top
        new = {}
        for name, head in heads.items():
            kind = head.get("type") if isinstance(head, dict) else None
            new[name] = (_merge(head, _legacy_head(kind, sections, where)) if kind in LEGACY_TYPES.values()
                         else head)
    else:
        return tree  # the schema check reports it
    _logger.warning("%s: old head layout (model.heads as a list, model.roi / proposals / mask / fcn / "
                    "sliding_window); read as model.heads: %s", where,
                    {n: h["type"] for n, h in new.items() if isinstance(h, dict)})
    model = {k: v for k, v in model.items() if k not in LEGACY_SECTIONS}
    model["heads"] = new
    return {**tree, "model": model}
