"""Start a model from another model's weights (``model.init_from``): fine-tuning.

Every tensor whose name and shape fit is loaded; class-dependent tensors (declared by the heads,
``detseg.modeling.class_layout``) have the rows of classes whose names match moved to their new
positions, background kept, and the other classes left as freshly initialised. Unlike
``--resume``, the optimizer, schedule and iteration start fresh. What loaded and what did not goes
into a report (``init_report.json`` in the run folder).

A classification checkpoint also fills a head that stands for the classifier as convolutions
(FCN's ``top: classifier``): its linear layers are converted (``detseg.modeling.convolutionalize``:
the first one's average pooling folded into a kernel, the next ones as 1x1 convolutions, the last
one's class rows moved by name into the score layer, background fresh), the conversion OverFeat
and FCN start from.

Accepted files: a detseg checkpoint (``tools/convert_weights.py``'s torchvision imports
included), or a plain state dict (``.pth`` read with ``weights_only=True``, ``.safetensors``),
which names no classes: its class rows are then used only when the class count is the same.
"""
from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import asdict, dataclass, field
from typing import Optional

import torch
from torch import nn

from ..modeling.class_layout import class_axes, layout_classes, transfer_rows
from .checkpoint import CheckpointError, load_checkpoint

logger = logging.getLogger(__name__)

# Under this share of the model's backbone weights loaded, the file is not a starting point for
# this architecture: refuse rather than train a mostly random network the user believes is not.
MIN_BACKBONE_FIT = 0.5
# Key prefixes of torchvision's own detection state dicts (not converted), and of its ImageNet
# classifiers (a backbone's weights: model.backbone.weights, not init_from).
_TORCHVISION_DETECTION = ("roi_heads.", "rpn.head.")
_TORCHVISION_CLASSIFIER = ("layer1.", "features.", "denseblock", "inception")


class InitError(CheckpointError):
    """The file cannot initialise this model; the message names the file and what does not fit."""


@dataclass
class InitReport:
    """What ``init_from`` did with each tensor (names are state-dict keys)."""

    source: str
    file_classes: Optional[list[str]]
    model_classes: list[str]
    class_sources: dict[str, Optional[str]]  # model class -> the file's class it starts from
    loaded: list[str] = field(default_factory=list)  # copied whole
    remapped: dict[str, str] = field(default_factory=dict)  # class rows moved by name: how
    reinitialised: dict[str, str] = field(default_factory=dict)  # model tensors left fresh: why
    ignored: dict[str, str] = field(default_factory=dict)  # file tensors not used: why
    # model tensors made from the file's classifier (linear -> convolution): from which tensor, how
    converted: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        """A few lines for the log."""
        matched = [f"{new}<-{old}" for new, old in self.class_sources.items() if old is not None]
        fresh = [new for new, old in self.class_sources.items() if old is None]
        lines = [f"init_from {self.source}: {len(self.loaded)} tensors loaded, {len(self.remapped)} "
                 f"class-remapped, {len(self.reinitialised)} re-initialised, {len(self.ignored)} "
                 f"ignored from the file"
                 + (f", {len(self.converted)} converted from its classifier" if self.converted else "")]
        if self.file_classes is not None:
            lines.append(f"  classes from the file: {', '.join(matched) or 'none'}; fresh: "
                         f"{', '.join(fresh) or 'none'}")
        for name, why in list(self.reinitialised.items())[:5]:
            lines.append(f"  re-initialised {name}: {why}")
        if len(self.reinitialised) > 5:
            lines.append(f"  ... and {len(self.reinitialised) - 5} more (see init_report.json)")
        return "\n".join(lines)


def read_init_file(path: str) -> tuple[dict[str, torch.Tensor], Optional[list[str]], Optional[str], dict]:
    """(state dict, class names or None, backbone name or None, the run's config or {}) from a
    detseg checkpoint or a plain state dict.

    Raises:
        InitError: missing or unreadable file, pickled code, or no tensors.
    """
    if not os.path.isfile(path):
        raise InitError(f"{path}: model.init_from: file not found")
    if path.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return load_file(path), None, None, {}
        except (SafetensorError, OSError, ValueError) as e:
            raise InitError(f"{path}: not a readable .safetensors file ({e})") from None
    obj = load_checkpoint(path)  # weights_only=True: pickled code is refused, never run
    names = backbone = None
    cfg = {}
    if isinstance(obj.get("model"), dict):
        names = obj.get("class_names")
        cfg = obj.get("config") if isinstance(obj.get("config"), dict) else {}
        if cfg:
            backbone = ((cfg.get("model") or {}).get("backbone") or {}).get("name")
        obj = obj["model"]
    elif isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    state = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not state:
        raise InitError(f"{path}: holds no tensors to initialise from")
    if any(k.startswith("module.") for k in state):  # saved from a DistributedDataParallel wrapper
        state = {k.removeprefix("module."): v for k, v in state.items()}
    if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        names = None
    return state, names, backbone if isinstance(backbone, str) else None, cfg


def match_classes(model_classes: list[str], file_classes: list[str],
                  class_map: Optional[dict[str, str]] = None) -> list[Optional[int]]:
    """For each model class, the index of the file's class of the same name (case-insensitive),
    or of ``class_map[name]`` when given; None where there is none.

    Raises:
        InitError: a ``class_map`` key that is no model class, or a value that is no file class.
    """
    class_map = dict(class_map or {})
    lower_model = {n.lower(): n for n in model_classes}
    first: dict[str, int] = {}
    for i, n in enumerate(file_classes):
        first.setdefault(n.lower(), i)  # torchvision's COCO list repeats "N/A": the first wins
    lookup = {}
    for new, old in class_map.items():
        if new.lower() not in lower_model:
            raise InitError(f"model.init_class_map: {new!r} is not a class of this dataset "
                            f"({', '.join(model_classes)})")
        if old.lower() not in first:
            raise InitError(f"model.init_class_map: {old!r} (for {new!r}) is not a class of the "
                            f"init_from file")
        lookup[new.lower()] = first[old.lower()]
    return [lookup.get(n.lower(), first.get(n.lower())) for n in model_classes]


def init_from(model: nn.Module, path: str, model_classes: list[str],
              class_map: Optional[dict[str, str]] = None, backbone: Optional[str] = None) -> InitReport:
    """Load what fits of ``path`` into ``model`` in place; class rows move by class name.

    Args:
        model: the freshly built model (its initialisation stays where nothing fits).
        path: a detseg checkpoint or a plain state dict (.pth, .safetensors).
        model_classes: the model's class names (the training dataset's), in label order.
        class_map: ``{model class: file class}`` for classes whose names differ.
        backbone: the model's backbone name (``model.backbone.name``): a detseg checkpoint of
            another backbone is refused (ResNet-50's 3x3 convolutions have ResNet-18's shapes,
            so shapes alone would half fit).

    Returns:
        An ``InitReport``.

    Raises:
        InitError: the file cannot be read, is of another backbone, or under half of the
            model's backbone weights fit.
    """
    state, file_classes, file_backbone, file_config = read_init_file(path)
    if backbone is not None and file_backbone is not None and file_backbone != backbone:
        raise InitError(f"{path}: a {file_backbone} model; this config's backbone is {backbone} "
                        f"(model.backbone.name): refusing to start from it")
    own = model.state_dict()
    axes = class_axes(model)
    k_new = len(model_classes)
    source = match_classes(model_classes, file_classes, class_map) if file_classes is not None else None
    # Without names (a plain state dict) class rows are taken by position when the counts agree.
    matched = source or [None] * k_new
    report = InitReport(source=path, file_classes=file_classes, model_classes=list(model_classes),
                        class_sources={n: None if j is None else file_classes[j]
                                       for n, j in zip(model_classes, matched)})
    new_values: dict[str, torch.Tensor] = {}
    converted, consumed = classifier_as_convolutions(model, own, state, file_config, report)
    # the file's linear layers now stand as the converted tensors under the model's own names
    state = {**{k: v for k, v in state.items() if k not in consumed}, **converted}
    for key, mine in own.items():
        if key not in state:
            report.reinitialised.setdefault(key, "not in the file")  # a failed conversion says why
            continue
        theirs = state[key]
        if key in axes:
            why = _class_tensor(key, mine, theirs, axes[key], source, k_new, report, new_values)
            if why:
                report.reinitialised[key] = why
            continue
        if theirs.shape != mine.shape:
            report.reinitialised[key] = (f"shape {tuple(theirs.shape)} in the file, "
                                         f"{tuple(mine.shape)} in the model")
            continue
        new_values[key] = theirs
        report.loaded.append(key)
    for key in state:
        if key not in own:
            report.ignored[key] = "not in this model"
        elif key in report.reinitialised:
            report.ignored[key] = report.reinitialised[key]
    _check_backbone_fit(path, own, report, state)
    with torch.no_grad():
        for key, value in new_values.items():
            own[key].copy_(value.to(own[key].dtype))
    return report


# a classification head's linear layers: heads.<head>.classifier.<index>.weight ([out, in])
_CLASSIFIER_LINEAR = re.compile(r"^heads\.([^.]+)\.classifier\.(\d+)\.weight$")


def classifier_linears(state: dict) -> dict[str, list[str]]:
    """``{head: [weight keys of its classifier's linear layers, in order]}`` of a state dict."""
    found: dict[str, list[tuple[int, str]]] = {}
    for key, value in state.items():
        m = _CLASSIFIER_LINEAR.match(key)
        if m and value.dim() == 2 and key[:-len("weight")] + "bias" in state:
            found.setdefault(m.group(1), []).append((int(m.group(2)), key))
    return {head: [k for _, k in sorted(keys)] for head, keys in found.items()}


def classifier_as_convolutions(model: nn.Module, own: dict, state: dict, file_config: dict,
                               report: InitReport) -> tuple[dict[str, torch.Tensor], set[str]]:
    """The file's classifier (its first classification head's linear layers) converted for each
    head of ``model`` (whose state dict is ``own``) that stands for it as convolutions
    (``classifier_convs``), keyed by the model's tensor names. The score layer's entry keeps the
    model's own background row, so that the class rows then move by name as any score layer's do.
    Conversions are recorded in ``report.converted``; a head whose layers do not fit gets the
    reason in ``reinitialised``.

    Returns:
        (the converted tensors, the file's keys they were made from)."""
    linears = classifier_linears(state)
    heads = [(name, head) for name, head in getattr(model, "heads", {}).items()
             if hasattr(head, "classifier_convs") and head.classifier_convs()]
    if not linears or not heads:
        return {}, set()
    source = next(iter(linears.values()))
    size = ((file_config.get("data") or {}).get("classify") or {}).get("size")
    out: dict[str, torch.Tensor] = {}
    for name, head in heads:
        convs = head.classifier_convs()
        target = f"heads.{name}.{convs[0]}.weight"
        if len(convs) != len(source):
            report.reinitialised[target] = (f"the file's classifier has {len(source)} linear layers, "
                                            f"this head's convolutional form {len(convs)}")
            continue
        if not isinstance(size, int):
            report.reinitialised[target] = "the file names no data.classify.size to convert its classifier at"
            continue
        try:
            out.update(_convert(model, own, name, head, convs, source, state, size, report))
        except ValueError as e:
            report.reinitialised[target] = f"its classifier cannot be converted: {e}"
    consumed = {key for w in source for key in (w, w[:-len("weight")] + "bias")} if out else set()
    return out, consumed


def _convert(model, own, name, head, convs, source, state, size, report) -> dict[str, torch.Tensor]:
    from ..modeling.convolutionalize import linear_as_conv_kernel
    backbone = model.backbone
    was_training = backbone.training
    backbone.eval()  # a probe for the map size: no batch-norm statistics updated
    try:
        with torch.no_grad():
            param = next(backbone.parameters())
            fmap = backbone(param.new_zeros(1, 3, size, size)).get(head.top)
    finally:
        backbone.train(was_training)
    if fmap is None:
        raise ValueError(f"the backbone returns no {head.top!r} map")
    channels, feature_size = fmap.shape[1], tuple(fmap.shape[-2:])
    out = {}
    for i, (conv, key) in enumerate(zip(convs, source)):
        w, b = state[key].float(), state[key[:-len("weight")] + "bias"].float()
        mine = own[f"heads.{name}.{conv}.weight"]
        if i == 0:
            pool = math.isqrt(w.shape[1] // channels)
            if channels * pool * pool != w.shape[1]:
                raise ValueError(f"{key} reads {w.shape[1]} values, not {channels} channels on a square grid")
            kernel = linear_as_conv_kernel(w, channels, pool, feature_size, mine.shape[-2:])
            how = f"linear layer on a {pool}x{pool} pooled map as a {mine.shape[-2]}x{mine.shape[-1]} convolution"
        else:
            kernel = w[:, :, None, None]
            how = "linear layer as a 1x1 convolution"
        if i == len(convs) - 1:  # the score layer: the model's background row, then the classes
            bg = own[f"heads.{name}.{conv}.bias"]
            kernel = torch.cat([mine[:1].float(), kernel])
            b = torch.cat([bg[:1].float(), b])
        if kernel.shape[1:] != mine.shape[1:]:
            raise ValueError(f"{key} converts to {tuple(kernel.shape)}, the model's {conv} is {tuple(mine.shape)}")
        out[f"heads.{name}.{conv}.weight"], out[f"heads.{name}.{conv}.bias"] = kernel, b
        report.converted[f"heads.{name}.{conv}.weight"] = f"{key}: {how}"
        report.converted[f"heads.{name}.{conv}.bias"] = f"{key[:-len('weight')]}bias: its bias"
    return out


def _class_tensor(key, mine, theirs, axes, source, k_new, report, out) -> Optional[str]:
    """Moves class rows of one class-dependent tensor into ``out``; returns why not, or None."""
    dims = sorted(axes)
    other = [d for d in range(mine.dim()) if d not in axes]
    if theirs.dim() != mine.dim() or any(theirs.shape[d] != mine.shape[d] for d in other):
        return f"shape {tuple(theirs.shape)} in the file, {tuple(mine.shape)} in the model"
    k_olds = {layout_classes(axes[d], theirs.shape[d]) for d in dims}
    k_old = k_olds.pop() if len(k_olds) == 1 else None
    if k_old is None:
        return f"shape {tuple(theirs.shape)} in the file fits no class count of this head"
    if source is None:
        if k_old != k_new:
            return (f"the file has {k_old} classes, the model {k_new}, and the file names no classes "
                    f"to match")
        out[key] = theirs
        report.loaded.append(key)
        return None
    src = [s if s is not None and s < k_old else None for s in source]
    if all(s is None for s in src):
        # Only the background rows could move; a background row alone, next to fresh class
        # rows, is no better a start than a fresh layer.
        return "no class of the model is in the file"
    out[key] = transfer_rows(mine, theirs, axes, src, k_old)
    if k_old == k_new and src == list(range(k_new)):
        report.loaded.append(key)
    else:
        copied = sum(s is not None for s in src)
        report.remapped[key] = f"{copied} of {k_new} classes (and background) from the file's {k_old}"
    return None


def _check_backbone_fit(path: str, own: dict, report: InitReport, state: dict) -> None:
    """Refuse a file that fits under half of the backbone's weights, counted in numbers (small
    normalisation vectors of another architecture often fit by chance; its convolutions do not)."""
    backbone = [k for k in own if k.startswith("backbone.") and own[k].is_floating_point()]
    total = sum(own[k].numel() for k in backbone)
    if not total:
        return
    loaded = set(report.loaded)
    fit = sum(own[k].numel() for k in backbone if k in loaded)
    if fit >= MIN_BACKBONE_FIT * total:
        return
    if any(k.startswith(_TORCHVISION_DETECTION) for k in state):
        hint = (" It looks like a torchvision detection state dict: convert it first with "
                "tools/convert_weights.py.")
    elif any(k.startswith(_TORCHVISION_CLASSIFIER) for k in state):
        hint = (" It looks like an ImageNet classifier's weights: give it as model.backbone.weights "
                "instead.")
    else:
        example = next((f"{k}: {why}" for k, why in report.reinitialised.items()
                        if k.startswith("backbone.")), "")
        hint = f" (e.g. {example}) Is it a model of another backbone?" if example else ""
    raise InitError(f"{path}: only {100 * fit / total:.0f}% of the model's backbone weights "
                    f"({sum(k in loaded for k in backbone)} of {len(backbone)} tensors) fit; "
                    f"refusing to start from it.{hint}")


__all__ = ["init_from", "read_init_file", "match_classes", "classifier_as_convolutions", "InitReport",
           "InitError"]
