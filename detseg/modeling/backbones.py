"""Shared CNN backbones built from torchvision's definitions.

Every backbone returns a dict of named feature maps and describes them with ``output_shape()``:
``{name: ShapeSpec(channels, stride)}``. Heads read channel counts from there, never from configs.

==================  ================================================================
LeNet-5             s2 (6, 2), s4 (16, 4), c5 (120, 4): LeCun et al. 1998 (our own:
                    torchvision has none), tanh and average-pool subsampling, valid
                    5x5 convolutions (no padding): a 32-px input gives c5 1 x 1
AlexNet             c3 (192, 8), c4 (256, 16), c5 (256, 32): torchvision's one-GPU
                    AlexNet, cut after conv1, pool1, pool2 (its floor pooling: a map
                    may be a cell short of size / stride)
VGG-11/16 (+_bn)    c3 (256, 8), c4 (512, 16), c5 = conv5 block (512, 16): no pool5, as
                    in R-CNN / SPPNet / FCN; Caffe's ceil-mode pooling
ResNet-18..152      c2..c5 at strides 4, 8, 16, 32
GoogLeNet           c3 (480, 8), c4a (512, 16: inception 4a, the first auxiliary
                    classifier's input), c4d (528, 16: 4d, the second's), c4 (832, 16),
                    c5 (1024, 32)
DenseNet-121        c3 (512, 8), c4 (1024, 16), c5 (1024, 32)
==================  ================================================================

With ``fpn=True`` the maps pass through torchvision's FeaturePyramidNetwork and come out as
p3..p5 (or p2..p5) with ``fpn_channels`` each.
"""
from __future__ import annotations

import logging
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional

import torch
import torchvision
from torch import nn
from torchvision.ops import FeaturePyramidNetwork, FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from detseg.modeling.trimmed_conv import trim_padding_taps

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShapeSpec:
    channels: int
    stride: int


def coarsest(shapes: dict[str, ShapeSpec]) -> str:
    """Name of the feature map with the largest stride (the default input of region heads); of
    maps sharing it, the deepest (VGG's conv5 block after conv4's, LeNet's C5 after S4)."""
    names = list(shapes)
    return max(reversed(names), key=lambda n: shapes[n].stride)


class WeightsError(RuntimeError):
    """Pretrained weights could not be found or do not fit the backbone."""


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d by a FrozenBatchNorm2d holding the same statistics."""
    if isinstance(module, nn.BatchNorm2d):
        frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
        frozen.weight.copy_(module.weight.detach())
        frozen.bias.copy_(module.bias.detach())
        frozen.running_mean.copy_(module.running_mean)
        frozen.running_var.copy_(module.running_var)
        return frozen
    for name, child in module.named_children():
        new = freeze_batchnorm(child)
        if new is not child:
            setattr(module, name, new)
    return module


class Backbone(nn.Module):
    """A sequence of named stages; ``forward`` returns the outputs named in ``out_features``.

    Args:
        stages: ordered (name, module, ShapeSpec of its output) triples.
        out_features: which stage outputs to return.
    """

    def __init__(self, stages: list[tuple[str, nn.Module, ShapeSpec]], out_features: list[str]):
        super().__init__()
        self.stage_names = [name for name, _, _ in stages]
        self.stages = nn.ModuleDict(OrderedDict((name, m) for name, m, _ in stages))
        self._shapes = {name: spec for name, _, spec in stages}
        missing = [f for f in out_features if f not in self._shapes]
        if missing:
            raise ValueError(f"unknown backbone features {missing}; have {self.stage_names}")
        self.out_features = list(out_features)
        self._last = max(self.stage_names.index(f) for f in out_features)

    def output_shape(self) -> dict[str, ShapeSpec]:
        return {f: self._shapes[f] for f in self.out_features}

    def freeze(self, freeze_at: int) -> None:
        """Freeze the first ``freeze_at`` stages (stem = 1), as detectron2 does."""
        for name in self.stage_names[:freeze_at]:
            for p in self.stages[name].parameters():
                p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x: ``Tensor[B, 3, H, W]`` normalised → {name: ``Tensor[B, C, H/s, W/s]``}."""
        out = {}
        for i, name in enumerate(self.stage_names[: self._last + 1]):
            x = self.stages[name](x)
            if name in self.out_features:
                out[name] = x
        return out


class FPNBackbone(nn.Module):
    """A backbone followed by a feature pyramid (torchvision's FeaturePyramidNetwork).

    With ``extra_pool`` a further level ``p{n+1}`` is the top level max-pooled by 2 (Mask R-CNN's
    "pool" level, read by the RPN only).
    """

    def __init__(self, body: Backbone, channels: int = 256, extra_pool: bool = False):
        super().__init__()
        self.body = body
        shapes = body.output_shape()
        self.in_names = list(shapes)
        extra = LastLevelMaxPool() if extra_pool else None
        self.fpn = FeaturePyramidNetwork([shapes[n].channels for n in self.in_names], channels,
                                         extra_blocks=extra)
        self._shapes = {"p" + n[1:]: ShapeSpec(channels, shapes[n].stride) for n in self.in_names}
        self.extra_name = None
        if extra_pool:
            top = self.in_names[-1]
            self.extra_name = f"p{int(top[1:]) + 1}"
            self._shapes[self.extra_name] = ShapeSpec(channels, shapes[top].stride * 2)

    def output_shape(self) -> dict[str, ShapeSpec]:
        return dict(self._shapes)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.body(x)
        out = self.fpn(OrderedDict((n, feats[n]) for n in self.in_names))
        result = {"p" + n[1:]: out[n] for n in self.in_names}
        if self.extra_name is not None:
            result[self.extra_name] = out["pool"]
        return result


# --------------------------------------------------------------------------- definitions


class LeNet5(nn.Module):
    """LeNet-5 (LeCun, Bottou, Bengio, Haffner 1998) on RGB input, as torchvision would define it
    had it one: ``features`` (C1, S2, C3, S4, C5) and ``classifier`` (F6 and the output layer).

    The paper's choices are kept: 5x5 convolutions without padding, tanh, average-pool
    subsampling, 120 C5 maps (a 32 x 32 input leaves C5 at 1 x 1, so C5 is the paper's "fully
    connected" layer in convolutional form), 84 F6 units. The output layer is a linear one
    rather than the paper's RBF units (as every modern reading of it does).
    """

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 5), nn.Tanh(), nn.AvgPool2d(2),  # C1, S2
            nn.Conv2d(6, 16, 5), nn.Tanh(), nn.AvgPool2d(2),  # C3, S4
            nn.Conv2d(16, 120, 5), nn.Tanh())  # C5
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(120, 84), nn.Tanh(), nn.Linear(84, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: ``[B, 3, 32, 32]`` → logits ``[B, K]``."""
        return self.classifier(self.features(x))


def _torchvision_model(name: str) -> nn.Module:
    if name == "lenet5":
        return LeNet5()
    if name == "googlenet":
        return torchvision.models.googlenet(aux_logits=False, init_weights=True)
    return getattr(torchvision.models, name)()


def _lenet5(net) -> list[tuple[str, nn.Module, ShapeSpec]]:
    f = net.features
    return [("s2", f[:3], ShapeSpec(6, 2)), ("s4", f[3:6], ShapeSpec(16, 4)), ("c5", f[6:], ShapeSpec(120, 4))]


def _vgg(net) -> list[tuple[str, nn.Module, ShapeSpec]]:
    """VGG with or without batch norm, cut at its max pools: stem to pool2, c3 to pool3, c4 to
    pool4, c5 the conv5 block without pool5."""
    feats = net.features
    pools = [i for i, m in enumerate(feats) if isinstance(m, nn.MaxPool2d)]
    for i in pools:
        feats[i].ceil_mode = True  # Caffe pooling: every input pixel is covered, any input size

    def width(end: int) -> int:  # channels after feats[:end]
        return [m for m in feats[:end] if isinstance(m, nn.Conv2d)][-1].out_channels

    _, p2, p3, p4, p5 = pools
    return [("stem", feats[:p2 + 1], ShapeSpec(width(p2), 4)),
            ("c3", feats[p2 + 1:p3 + 1], ShapeSpec(width(p3), 8)),
            ("c4", feats[p3 + 1:p4 + 1], ShapeSpec(width(p4), 16)),
            ("c5", feats[p4 + 1:p5], ShapeSpec(width(p5), 16))]


def _alexnet(net) -> list[tuple[str, nn.Module, ShapeSpec]]:
    # features: conv1 relu pool1 | conv2 relu pool2 | conv3 relu conv4 relu conv5 relu | pool5
    f = net.features
    return [("stem", f[:2], ShapeSpec(64, 4)),
            ("c3", f[2:5], ShapeSpec(192, 8)),
            ("c4", f[5:12], ShapeSpec(256, 16)),
            ("c5", f[12:], ShapeSpec(256, 32))]


def _resnet(net) -> list[tuple[str, nn.Module, ShapeSpec]]:
    widths = [net.layer1[-1].conv2.out_channels * net.layer1[-1].expansion * (2 ** i) for i in range(4)]
    return [("stem", nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool), ShapeSpec(64, 4)),
            ("c2", net.layer1, ShapeSpec(widths[0], 4)),
            ("c3", net.layer2, ShapeSpec(widths[1], 8)),
            ("c4", net.layer3, ShapeSpec(widths[2], 16)),
            ("c5", net.layer4, ShapeSpec(widths[3], 32))]


def _googlenet(n) -> list[tuple[str, nn.Module, ShapeSpec]]:
    return [("stem", nn.Sequential(n.conv1, n.maxpool1, n.conv2, n.conv3, n.maxpool2), ShapeSpec(192, 8)),
            ("c3", nn.Sequential(n.inception3a, n.inception3b), ShapeSpec(480, 8)),
            # split where the auxiliary classifiers read (after 4a and after 4d)
            ("c4a", nn.Sequential(n.maxpool3, n.inception4a), ShapeSpec(512, 16)),
            ("c4d", nn.Sequential(n.inception4b, n.inception4c, n.inception4d), ShapeSpec(528, 16)),
            ("c4", nn.Sequential(n.inception4e), ShapeSpec(832, 16)),
            ("c5", nn.Sequential(n.maxpool4, n.inception5a, n.inception5b), ShapeSpec(1024, 32))]


def _densenet121(net) -> list[tuple[str, nn.Module, ShapeSpec]]:
    f = net.features
    return [("stem", nn.Sequential(f.conv0, f.norm0, f.relu0, f.pool0, f.denseblock1), ShapeSpec(256, 4)),
            ("c3", nn.Sequential(f.transition1, f.denseblock2), ShapeSpec(512, 8)),
            ("c4", nn.Sequential(f.transition2, f.denseblock3), ShapeSpec(1024, 16)),
            ("c5", nn.Sequential(f.transition3, f.denseblock4, f.norm5, nn.ReLU(inplace=True)),
             ShapeSpec(1024, 32))]


_DEFINITIONS = {"lenet5": _lenet5, "alexnet": _alexnet, "vgg11": _vgg, "vgg11_bn": _vgg, "vgg16": _vgg, "vgg16_bn": _vgg,
                "resnet18": _resnet, "resnet34": _resnet, "resnet50": _resnet, "resnet101": _resnet,
                "resnet152": _resnet, "googlenet": _googlenet, "densenet121": _densenet121}
# torchvision weights enums for online use (``weights: DEFAULT`` in the config).
_WEIGHTS_ENUMS = {"lenet5": None, "alexnet": "AlexNet_Weights", "vgg11": "VGG11_Weights", "vgg11_bn": "VGG11_BN_Weights",
                  "vgg16": "VGG16_Weights", "vgg16_bn": "VGG16_BN_Weights", "resnet18": "ResNet18_Weights",
                  "resnet34": "ResNet34_Weights", "resnet50": "ResNet50_Weights",
                  "resnet101": "ResNet101_Weights", "resnet152": "ResNet152_Weights",
                  "googlenet": "GoogLeNet_Weights", "densenet121": "DenseNet121_Weights"}
BACKBONES = tuple(_DEFINITIONS)
# Stages returned when ``out_features`` is not given.
_DEFAULT_OUT = {"lenet5": ["s4", "c5"]}
# Classifier parts of torchvision's models that a backbone does not use.
_HEAD_PREFIXES = ("fc.", "classifier.", "aux1.", "aux2.", "avgpool.", "dropout.")


# --------------------------------------------------------------------------- weights


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Tensors from a .pth (loaded with weights_only=True) or .safetensors file."""
    if not os.path.isfile(path):
        raise WeightsError(f"weights file not found: {path} (see weights/README.md)")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        try:
            return load_file(path)
        except Exception as e:  # safetensors' own error types: a truncated or foreign file
            detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise WeightsError(f"{path}: not a loadable weights file (safetensors: {detail})") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsError(f"{path}: not a loadable weights file ({type(e).__name__}: {e})") from None
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]  # a detseg or detectron2-style checkpoint
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise WeightsError(f"{path}: expected a state dict, got {type(obj).__name__}")
    return obj


def _resolve_weights(name: str, weights: str) -> tuple[dict, str]:
    if os.path.splitext(weights)[1] in (".pth", ".pt", ".safetensors") or os.sep in weights:
        return read_state_dict(weights), weights
    if _WEIGHTS_ENUMS[name] is None:
        raise WeightsError(f"{name} has no published weights to download; set model.backbone.weights "
                           f"to a .pth / .safetensors file (a detseg checkpoint of it, say)")
    enum = getattr(torchvision.models, _WEIGHTS_ENUMS[name])
    try:
        member = getattr(enum, weights)
    except AttributeError:
        raise WeightsError(f"{weights!r} is neither a weights file nor a member of {enum.__name__} "
                           f"({', '.join(enum.__members__)})") from None
    try:
        state = member.get_state_dict(progress=False)
    except Exception as e:
        raise WeightsError(f"could not download {enum.__name__}.{weights} ({type(e).__name__}); "
                           f"place the file under weights/ and set model.backbone.weights to its "
                           f"path (weights/README.md)") from None
    return state, f"{enum.__name__}.{weights}"


def _load_reporting(module: nn.Module, state: dict, source: str, ignore=()) -> None:
    """``load_state_dict(strict=False)`` and one clear line about what did not fit."""
    own = module.state_dict()
    bad_shape = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if bad_shape:
        raise WeightsError(f"{source}: shape mismatch for {len(bad_shape)} keys, e.g. {bad_shape[0]}: "
                           f"file {tuple(state[bad_shape[0]].shape)} vs model "
                           f"{tuple(own[bad_shape[0]].shape)}; is this the right architecture?")
    result = module.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    unexpected = [k for k in result.unexpected_keys if not k.startswith(ignore)]
    if missing or unexpected:
        logger.warning("%s: %d missing keys %s; %d unexpected keys %s", source, len(missing),
                       missing[:4], len(unexpected), unexpected[:4])
    else:
        logger.info("%s: all backbone weights loaded", source)


def build_backbone(name: str, *, weights: Optional[str] = None, freeze_at: int = 0,
                   norm: str = "bn", fpn: bool = False, fpn_channels: int = 256,
                   out_features: Optional[list[str]] = None, fpn_extra_pool: bool = False) -> nn.Module:
    """Build a backbone.

    Args:
        name: one of ``BACKBONES`` (lenet5, alexnet, vgg11 / vgg16 with or without ``_bn``,
            resnet18 / 34 / 50 / 101 / 152, googlenet, densenet121).
        weights: None (random), a torchvision weights enum member name such as ``"DEFAULT"``
            (downloads when online), or a local ``.pth`` / ``.safetensors`` file.
        freeze_at: number of leading stages to freeze (stem = 1).
        norm: ``"bn"`` or ``"frozen_bn"``.
        fpn: add a feature pyramid over ``out_features``.
        out_features: stage names to return (default c3, c4, c5; LeNet-5: s4, c5).
        fpn_extra_pool: with ``fpn``, one more level max-pooled from the top one.
    """
    if name not in _DEFINITIONS:
        raise ValueError(f"unknown backbone {name!r}; choose from {sorted(_DEFINITIONS)}")
    net = _torchvision_model(name)
    state, source = _resolve_weights(name, weights) if weights else (None, None)
    ours = state is not None and all(k.startswith("stages.") for k in state)
    if state is not None and not ours:
        # A torchvision classifier checkpoint: load it into torchvision's own model, whose
        # modules our stages are then cut from.
        _load_reporting(net, state, source, ignore=_HEAD_PREFIXES)
    body = Backbone(_DEFINITIONS[name](net), out_features or _DEFAULT_OUT.get(name, ["c3", "c4", "c5"]))
    trim_padding_taps(body)  # training at small inputs skips the taps that read only padding
    body.arch = name  # heads that follow the architecture's own design read it (classify)
    if ours:
        _load_reporting(body, state, source)
    if norm == "frozen_bn":
        freeze_batchnorm(body)
    if freeze_at:
        body.freeze(freeze_at)
    return FPNBackbone(body, fpn_channels, fpn_extra_pool) if fpn else body


def fold_frozen_batchnorm(module: nn.Module) -> int:
    """Fold every FrozenBatchNorm2d into the convolution before it, for inference.

    ``conv -> frozen BN`` is an affine map of the convolution's output, so it becomes the
    convolution with scaled weights and a bias: one pass over each activation instead of three.
    Pairs are found in ``nn.Sequential`` containers (conv followed by BN) and as ``convK`` /
    ``bnK`` siblings (torchvision's ResNet blocks). Results change only by float rounding.

    Returns:
        the number of BN layers folded (each replaced by ``nn.Identity``).
    """
    folded = 0

    def fold(conv: nn.Conv2d, bn: FrozenBatchNorm2d) -> None:
        scale = bn.weight * (bn.running_var + bn.eps).rsqrt()
        shift = bn.bias - bn.running_mean * scale
        with torch.no_grad():
            conv.weight.mul_(scale.view(-1, 1, 1, 1))
            if conv.bias is None:
                conv.bias = nn.Parameter(shift.clone(), requires_grad=False)
            else:
                conv.bias.mul_(scale).add_(shift)

    for parent in list(module.modules()):
        children = list(parent.named_children())
        for (name_a, a), (name_b, b) in zip(children, children[1:]):
            if (isinstance(parent, nn.Sequential) and isinstance(a, nn.Conv2d)
                    and isinstance(b, FrozenBatchNorm2d)):
                fold(a, b)
                setattr(parent, name_b, nn.Identity())
                folded += 1
        for name, child in children:
            if isinstance(child, FrozenBatchNorm2d) and name.startswith("bn"):
                conv = getattr(parent, "conv" + name[2:], None)
                if isinstance(conv, nn.Conv2d):
                    fold(conv, child)
                    setattr(parent, name, nn.Identity())
                    folded += 1
    return folded


# --------------------------------------------------------------------------- helpers for heads


def receptive_field(backbone: nn.Module, feature: str) -> tuple[int, int]:
    """Upper bounds (size, left padding) in pixels of the receptive field of one cell of
    ``feature``, for a ``Backbone`` (stages run in order).

    Walks the stages' convolutions and poolings in registration order, skipping ResNet's 1x1
    shortcut projections. Parallel branches (Inception, dense blocks) are summed, which
    over-estimates: a larger margin keeps the naive/convolutional equivalence exact, it only
    costs time.
    """
    names = getattr(backbone, "stage_names", None)
    if names is None or feature not in names:
        raise ValueError("receptive_field needs a detseg Backbone (no FPN: its top-down path "
                         f"widens every level's field); got {type(backbone).__name__}")
    size, pad, jump = 1, 0, 1
    for stage in names[: names.index(feature) + 1]:
        for name, m in backbone.stages[stage].named_modules():
            if "downsample" in name.split(".") or not isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
                continue
            k, s, p = (_pair(getattr(m, a))[0] for a in ("kernel_size", "stride", "padding"))
            d = _pair(getattr(m, "dilation", 1))[0]
            size += d * (k - 1) * jump
            pad += p * jump
            jump *= s
    return size, pad


def context_margin(backbone: nn.Module, feature: str, stride: int) -> int:
    """Pixels of context beyond a window that its cells' receptive fields reach (either side)."""
    size, pad = receptive_field(backbone, feature)
    return max(pad, size - pad - stride)


def run_until(backbone: nn.Module, x: torch.Tensor, feature: str) -> torch.Tensor:
    """The backbone's ``feature`` map, without computing the stages after it when possible."""
    names = getattr(backbone, "stage_names", None)
    if names is None:
        return backbone(x)[feature]
    for name in names[: names.index(feature) + 1]:
        x = backbone.stages[name](x)
    return x


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)
