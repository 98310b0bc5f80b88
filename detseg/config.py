"""Typed configuration: the schema of the sections that are not heads, and the checker.

``load_config(path, overrides)``: ``load_yaml_tree`` reads the file and its ``_base_`` files and
``apply_overrides`` adds ``a.b=c`` overrides (``detseg.yaml_tree``), remembering which file or
"command line" set each key; ``from_dict`` upgrades old layouts (``detseg.config_upgrade``, a
one-line notice) and checks every key and value, naming key and source on an error. Each head's
settings dataclass lives beside its head (``detseg.modeling.heads``) and joins the schema through
``register_head_config``; sections picked by a ``type`` key (a head, a ``pooler``) are ``Tagged``.
"""
from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

import yaml

from .config_upgrade import upgrade_tree
from .yaml_tree import ConfigError, Sources, apply_overrides, load_yaml_tree, where_set


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
    name: Literal["lenet5", "alexnet", "vgg11", "vgg11_bn", "vgg16", "vgg16_bn", "resnet18", "resnet34", "resnet50",
                  "resnet101", "resnet152", "googlenet", "densenet121"] = "resnet18"
    # None: random init; "DEFAULT"/"IMAGENET1K_V1": torchvision weights enum (needs network);
    # any other string: a local .pth / .safetensors file.
    weights: Optional[str] = None
    freeze_at: int = 0
    norm: Literal["bn", "frozen_bn"] = "bn"
    fpn: bool = False
    fpn_channels: int = 256
    out_features: Optional[list[str]] = None  # stages to return (default c3, c4, c5)
    fpn_extra_pool: bool = False  # one more FPN level, max-pooled from the top (Mask R-CNN's "pool")


class Tagged:
    """Schema marker of a section whose ``type`` key picks its dataclass from ``options`` (type
    name -> dataclass with a ``type`` field defaulting to that name). Each dataclass has only the
    keys that mean something for its type: any other is an error naming the key, its file and
    the type."""

    options: dict[str, type] = {}
    what = "section"


# ``model.heads`` maps an instance name to one head's settings, the dataclass its ``type`` names.
# Each head type registers its dataclass (``detseg.modeling.heads.register_head`` does, for the
# built-in heads as for one's own); ``import detseg`` registers the built-in ones.
HEAD_CONFIGS: dict[str, type] = {}


def register_head_config(type_name: str, cls: type) -> None:
    """Make ``model.heads.<name>: {type: type_name, ...}`` read into dataclass ``cls``."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if "type" not in fields or fields["type"].default != type_name:
        raise TypeError(f"{cls.__name__} needs a field `type` defaulting to {type_name!r}")
    HEAD_CONFIGS[type_name] = cls


class HeadConfig(Tagged):
    """Schema marker for one head's settings: the dataclass of ``HEAD_CONFIGS[type]``."""

    options = HEAD_CONFIGS
    what = "head"


@dataclass
class PanopticConfig:
    """Merge a semantic head's map with a mask head's instances (needs both), as detectron2's
    ``combine_semantic_and_instance_outputs``. With panoptic training data (``data.*.panoptic_file``
    or ``data.shapes.panoptic``) the semantic heads predict the stuff classes (0: any thing)."""

    enabled: bool = False
    instance_score: float = ranged(0.5, ge=0, le=1)  # instances below this score are left out
    # an instance with more than this share of its mask under higher-scoring ones is dropped
    overlap: float = ranged(0.5, ge=0, le=1)
    # stuff regions smaller than this (pixels of the image file) are dropped (detectron2's
    # stuff_area_thresh, 4096 for COCO's 640 px photos)
    min_area: int = ranged(64, ge=0)


@dataclass
class ModelConfig:
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    # instance name -> head settings with a `type` (fcn, sliding_window, rcnn, region)
    heads: dict[str, HeadConfig] = field(default_factory=lambda: {"seg": HEAD_CONFIGS["fcn"]()})
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
    # COCO panoptic ground truth of the same images (panoptic_*.json; ann_file holds the things'
    # instances): stuff targets for a panoptic model's semantic head, and PQ at evaluation
    panoptic_file: Optional[str] = None
    panoptic_dir: Optional[str] = None  # its PNG folder (default: panoptic_file without .json)


@dataclass
class CopyPasteConfig:
    """Copy-paste augmentation (``detseg.data.copy_paste``): objects cut from other training
    images along their masks pasted in; the train split only."""

    prob: float = ranged(0.0, ge=0, le=1)  # share of training images given pasted objects; 0: off
    max_objects: int = ranged(3, ge=1)  # 1 to this many objects pasted into such an image
    # what to paste: a class drawn with probability n_c^(1 - rarity) (n_c its training instances):
    # 0 every instance alike (the paper's random objects), 1 every class alike (rare ones favoured)
    rarity: float = ranged(1.0, ge=0)
    scale: list[float] = ranged([0.5, 1.5], gt=0)  # random scale of a pasted object, [low, high]
    min_visible: float = ranged(0.1, ge=0, le=1)  # an object covered more than this is dropped


@dataclass
class ShapesConfig:
    """The built-in synthetic dataset used when no ``data.train.ann_file`` is set."""

    seed: int = 0
    num_train: int = ranged(300, ge=1)
    num_val: int = ranged(60, ge=0)
    cache_dir: Optional[str] = None
    # Which shapes to draw (detseg.data.shapes.VOCABULARY); None: circle, rectangle, triangle, hexagon
    classes: Optional[list[str]] = None
    # A long-tailed train split: the first class this many times as frequent as the last
    # (exponential decay between); val stays balanced. 1: every class alike.
    imbalance: float = ranged(1.0, ge=1.0)
    # the panoptic variant: sky, ground and water (stuff) behind the shapes, with COCO panoptic files
    panoptic: bool = False


@dataclass
class ClassifyDataConfig:
    """Classification data (models whose head is ``type: classify``): a folder per class when
    ``data.train.image_dir`` is set without an ``ann_file``, object crops of a COCO-format
    dataset when ``ann_file`` is set, else the ``builtin`` set."""

    size: int = ranged(224, ge=32)  # images are cropped / resized to size x size (a multiple of 32)
    # test: the centre size x size of the image resized to size / crop_ratio (1: the whole image)
    crop_ratio: float = ranged(0.875, gt=0, le=1)
    min_scale: float = ranged(0.08, gt=0, le=1)  # train (augment default): RandomResizedCrop's area share
    flip: bool = True  # train: horizontal flips (off for digits and text)
    crop_context: float = ranged(0.1, ge=0)  # COCO crops: the box grown by this share of its size a side
    builtin: Literal["shapes", "digits"] = "shapes"  # shapes: data.shapes' seed, sizes and classes
    shapes_size: int = ranged(64, ge=16)  # pixels of a built-in shapes image


@dataclass
class DataConfig:
    train: SplitConfig = field(default_factory=SplitConfig)
    val: SplitConfig = field(default_factory=SplitConfig)
    shapes: ShapesConfig = field(default_factory=ShapesConfig)
    copy_paste: CopyPasteConfig = field(default_factory=CopyPasteConfig)
    classify: ClassifyDataConfig = field(default_factory=ClassifyDataConfig)
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
    # random: plain shuffling; repeat_factor: LVIS's (images of classes held by fewer than
    # repeat_threshold of the images repeat); class_aware: a class picked uniformly, then an image
    # holding it; sqrt_frequency: a class picked in proportion to the square root of its image
    # count; undersample: images holding only frequent classes (in more than undersample_frequent
    # of the images) kept with probability undersample_keep each epoch
    sampler: Literal["random", "repeat_factor", "class_aware", "sqrt_frequency", "undersample"] = "random"
    repeat_threshold: float = 0.001
    undersample_frequent: float = ranged(0.1, ge=0, le=1)
    undersample_keep: float = ranged(0.5, gt=0, le=1)
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
class RebalanceConfig:
    """After training, the classifier's last layer re-fitted on class-balanced feature vectors
    (``detseg.engine.rebalance``, as ``tools/rebalance.py``): the rare classes raised to the most
    frequent one with SMOTE or Borderline-SMOTE in feature space, written to ``<run>/rebalanced``."""

    method: Literal["none", "smote", "borderline_smote"] = "none"
    k_neighbors: int = ranged(5, ge=1)  # same-class neighbours a synthetic vector is drawn towards
    negatives_per_image: int = ranged(16, ge=0)  # region heads: background proposals per image
    head: Optional[str] = None  # the head to re-fit (default: the model's classify / region / rcnn head)


@dataclass
class SolverConfig:
    optimizer: Literal["sgd", "adamw"] = "adamw"
    lr: float = ranged(0.002, gt=0)
    momentum: float = ranged(0.9, ge=0, le=1)
    weight_decay: float = ranged(1e-4, ge=0)
    max_iter: int = ranged(1700, ge=1)
    # Train for this many minutes of loop instead (Ultralytics' "time"): max_iter becomes the
    # ceiling and the run's length is fitted to the measured speed of its steps, the schedule,
    # eval_period and checkpoint_period following it as fractions of max_iter
    # (detseg.engine.time_budget). None: max_iter iterations.
    max_minutes: Optional[float] = ranged(None, gt=0)
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
    rebalance: RebalanceConfig = field(default_factory=RebalanceConfig)


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
    # per-class figures also averaged by training frequency (APr / APc / APf, mIoU_r ...,
    # accuracy_r ...): a class held by at most bins[0] training images is rare, by at most
    # bins[1] common, by more frequent (LVIS's 10 and 100)
    frequency_bins: list[int] = ranged([10, 100], ge=0)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    evaluator: EvaluatorConfig = field(default_factory=EvaluatorConfig)



# --------------------------------------------------------------------------- schema checking


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
    if isinstance(tp, type) and issubclass(tp, Tagged):
        return f"{tp.what} settings with a `type`"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str, sources: Sources) -> Any:
    """Return ``value`` checked against type ``tp`` (ints are accepted for floats)."""

    def fail() -> ConfigError:
        return ConfigError(f"config key '{key}' (from {where_set(key, sources)}): expected "
                           f"{_type_name(tp)}, got {value!r}")

    origin = typing.get_origin(tp)
    if isinstance(tp, type) and issubclass(tp, Tagged):
        return _tagged(value, tp, key, sources)
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
                raise ConfigError(f"config key '{key}' (from {where_set(key, sources)}): a model needs at "
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
    if tp is float and isinstance(value, str):
        # PyYAML (YAML 1.1) reads "1e-3" as a string; accept what Python reads as a number.
        try:
            return float(value)
        except ValueError:
            raise fail() from None
    # bool is an int to Python, not to a config; an int is a float
    accepted = {type(None): (type(None),), bool: (bool,), int: (int,), float: (int, float), str: (str,)}
    if tp in accepted:
        if not isinstance(value, accepted[tp]) or (tp is not bool and isinstance(value, bool)):
            raise fail()
        return float(value) if tp is float else value
    raise TypeError(f"unsupported config type {tp!r} for {key}")


HEAD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
RESERVED_HEAD_NAMES = ("loss", "panoptic")


def _head_config(value: Any, key: str, sources: Sources, name: str) -> Any:
    """One ``model.heads.<name>`` entry: the dataclass its ``type`` names."""
    if not HEAD_NAME.fullmatch(name) or name in RESERVED_HEAD_NAMES:
        raise ConfigError(f"config key '{key}' (from {where_set(key, sources)}): a head name must be a "
                          f"Python identifier other than {', '.join(RESERVED_HEAD_NAMES)}")
    return _tagged(value, HeadConfig, key, sources)


def _tagged(value: Any, tagged: type, key: str, sources: Sources) -> Any:
    """A ``Tagged`` section: the dataclass of ``tagged.options[value["type"]]``, checked."""
    what, options = tagged.what, tagged.options
    types_known = ", ".join(repr(t) for t in options)
    if not isinstance(value, dict) or "type" not in value:
        raise ConfigError(f"config key '{key}' (from {where_set(key, sources)}): a {what} needs settings "
                          f"with a `type`, one of {types_known}; got {value!r}")
    cls = options.get(value["type"]) if isinstance(value["type"], str) else None
    if cls is None:
        raise ConfigError(f"config key '{key}.type' (from {where_set(key + '.type', sources)}): unknown "
                          f"{what} type {value['type']!r}; one of {types_known}")
    return _build(cls, value, key + ".", sources, kind=f"{what} type {value['type']!r}")


def _build(cls: type, data: dict, prefix: str, sources: Sources, kind: str = "") -> Any:
    """``cls(**data)`` with every value checked; ``kind`` (say "pooler type 'spp'") joins the
    message of an unknown key."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            full = prefix + str(key)
            under = f" of {kind}" if kind else ""
            raise ConfigError(
                f"unknown config key '{full}' (from {where_set(full, sources)}); "
                f"valid keys under '{prefix.rstrip('.') or '<root>'}'{under}: {', '.join(sorted(names))}"
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
            raise ConfigError(f"config key '{key}' (from {where_set(key, sources)}): must be {need}, got {v!r}")


def from_dict(data: dict, sources: Optional[Sources] = None, cls: type = Config) -> Any:
    """Build and check a config dataclass from a plain mapping (old layouts upgraded, see
    ``detseg.config_upgrade``)."""
    sources = {} if sources is None else sources
    if cls is Config:
        data = upgrade_tree(data, sources, HEAD_CONFIGS)
    cfg = _build(cls, data, "", sources)
    if cls is Config and cfg.solver.best_metric == "mIoU" and all(
            h.type == "classify" for h in cfg.model.heads.values()):
        # the default names a segmentation metric, which a classifier never reports: without this
        # a classification run would keep no best.pth
        cfg.solver.best_metric = "top1"
    return cfg


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
    overrides = list(overrides or [])
    tree = apply_overrides(_default_heads_named(tree, overrides), sources, overrides)
    return from_dict(tree, sources)


def _default_heads_named(tree: dict, overrides: list[str]) -> dict:
    """``tree`` with the built-in default head written out (``{seg: {type: fcn}}``) when it sets
    no ``model.heads`` and an override edits a key of that head: ``model.heads.seg.head_norm=bn``
    on the defaults then edits the default FCN head, as it does on a file that names it, instead
    of making a head of its own with no ``type``."""
    model = tree.get("model")
    if model is not None and (not isinstance(model, dict) or "heads" in model):
        return tree
    defaults = ModelConfig().heads
    edited = {parts[2] for parts in (o.partition("=")[0].strip().split(".") for o in overrides)
              if len(parts) >= 4 and parts[:2] == ["model", "heads"] and parts[2] in defaults}
    if not edited:
        return tree
    heads = {name: {"type": defaults[name].type} for name in sorted(edited)}
    return {**tree, "model": {**(model or {}), "heads": heads}}

