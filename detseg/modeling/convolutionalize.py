"""Convolutionalization (OverFeat, Sermanet et al. 2014; FCN, Long et al. 2015): a trained
classifier's fully connected layers as convolutions with the same weights.

The first linear layer reads the ``f x f`` map the backbone makes of a training-size image (after
the classifier's average pooling to its ``p x p`` grid, and a flatten): as a convolution with an
``f x f`` kernel it computes exactly that layer at every ``f x f`` window of a larger map. The
pooling is linear, so it folds into the kernel (``W_eff = W`` composed with the pooling's
matrix, found by pooling a basis); later linear layers become 1x1 convolutions. Slid over a
whole image's map, the converted classifier gives at each cell the score of the window of the
training size whose map starts there, one backbone stride apart: the sliding window at the cost
of one pass.

The equality with classifying the window's crop is exact where the backbone sees the same
pixels in both: a backbone without zero padding (LeNet-5's valid convolutions), or any backbone
on the crop's own map (a window's cells of the whole map differ from the crop's only through the
network's zero padding at the crop's border, as OverFeat notes; ``SlidingWindowHead`` pads by the
receptive field to remove even that).
"""
from __future__ import annotations

from typing import Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def pooled_linear_kernel(linear: Union[nn.Linear, Tensor], channels: int, pool: int,
                         feature_size: Sequence[int]) -> Tensor:
    """``[out, C, fh, fw]``: the kernel that ``linear`` (a layer, or its weight ``[out, C * pool *
    pool]``, over the flattened ``[C, pool, pool]`` average-pooled map) is on the ``fh x fw`` map
    itself.

    ``AdaptiveAvgPool2d`` is a fixed linear map from the ``fh x fw`` cells to the ``pool x pool``
    ones; pooling each basis map gives its matrix, and the kernel is the weight times it."""
    fh, fw = (int(v) for v in feature_size)
    w = (linear if isinstance(linear, Tensor) else linear.weight).detach()
    if w.shape[1] != channels * pool * pool:
        raise ValueError(f"linear layer reads {w.shape[1]} values, not {channels} x {pool} x {pool}")
    basis = torch.eye(fh * fw, dtype=torch.float64).view(fh * fw, 1, fh, fw)
    pooling = F.adaptive_avg_pool2d(basis, pool).view(fh * fw, pool * pool)  # [cell, grid cell]
    kernel = torch.einsum("ocg,kg->ock", w.double().view(w.shape[0], channels, pool * pool), pooling)
    return kernel.view(w.shape[0], channels, fh, fw).to(w.dtype)


def linear_as_conv_kernel(weight: Tensor, channels: int, pool: int, feature_size: Sequence[int],
                          kernel_size: Sequence[int]) -> Tensor:
    """The first linear layer of a classifier (``weight [out, C * pool * pool]``, trained on
    ``feature_size`` maps) as the kernel ``[out, C, kh, kw]`` of a convolution with "same"
    padding: ``pooled_linear_kernel`` placed at the kernel's centre (the tap that "same" padding
    puts on the output cell itself when it is smaller), zeros around it. At a cell whose
    neighbourhood is the training map, the convolution gives the layer's output.

    Raises:
        ValueError: the training map is larger than the kernel (the layer reads more cells than
            the convolution has taps).
    """
    kernel = pooled_linear_kernel(weight, channels, pool, feature_size)
    fh, fw = kernel.shape[-2:]
    kh, kw = (int(v) for v in kernel_size)
    if fh > kh or fw > kw:
        raise ValueError(f"the classifier read a {fh}x{fw} map; a {kh}x{kw} convolution cannot hold it")
    out = kernel.new_zeros(kernel.shape[0], channels, kh, kw)
    oy, ox = (kh - 1) // 2 - (fh - 1) // 2, (kw - 1) // 2 - (fw - 1) // 2
    out[:, :, oy:oy + fh, ox:ox + fw] = kernel
    return out


def convolutionalize(classifier: nn.Sequential, channels: int, feature_size: Sequence[int]) -> nn.Sequential:
    """The classifier ``[AdaptiveAvgPool2d(p), Flatten, (Dropout), Linear, (act, Dropout,
    Linear)...]`` (``detseg.modeling.heads.classify.build_classifier``) as convolutions.

    Args:
        classifier: the classifier, trained on maps of ``feature_size``.
        channels: C of the map it reads.
        feature_size: (fh, fw) of that map for a training-size image.

    Returns:
        ``nn.Sequential`` of ``Conv2d`` (``fh x fw`` then 1x1) and the classifier's activation and
        dropout modules: ``[B, C, H, W]`` → logits ``[B, K, H - fh + 1, W - fw + 1]``; at each
        position equal (to float rounding) to the classifier on that ``fh x fw`` window.
    """
    layers = list(classifier)
    if len(layers) < 3 or not isinstance(layers[0], nn.AdaptiveAvgPool2d) or not isinstance(layers[1], nn.Flatten):
        raise ValueError("convolutionalize expects [AdaptiveAvgPool2d, Flatten, ..., Linear] (build_classifier's layout)")
    pool = layers[0].output_size
    pool = pool if isinstance(pool, int) else pool[0]
    out: list[nn.Module] = []
    first = True
    for layer in layers[2:]:
        if isinstance(layer, nn.Linear):
            if first:
                kernel = pooled_linear_kernel(layer, channels, pool, feature_size)
                conv = nn.Conv2d(channels, layer.out_features, tuple(kernel.shape[-2:]))
                conv.weight.data.copy_(kernel)
                first = False
            else:
                conv = nn.Conv2d(layer.in_features, layer.out_features, 1)
                conv.weight.data.copy_(layer.weight.detach().view(*layer.weight.shape, 1, 1))
            conv.bias.data.copy_(layer.bias.detach())
            out.append(conv)
        elif isinstance(layer, (nn.ReLU, nn.Tanh, nn.Dropout)):
            out.append(type(layer)(layer.p) if isinstance(layer, nn.Dropout) else type(layer)())
        else:
            raise ValueError(f"convolutionalize: no convolutional form for {type(layer).__name__}")
    return nn.Sequential(*out).to(next(classifier.parameters()).device)


class ConvolutionalClassifier(nn.Module):
    """A trained classifier made fully convolutional: ``backbone`` to ``feature``, then the
    convolutionalized classifier head.

    Args:
        backbone: the classifier's backbone (``Model.backbone``).
        head: its ``ClassifyHead``.
        train_size: (h, w) of the images it was trained on (``data.classify.size``).

    ``forward(pixels [B, 3, H, W])`` → logits ``[B, K, H', W']``: cell (i, j) scores the window
    of ``train_size`` whose feature map starts at cell (i, j), one backbone stride apart.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, train_size: Sequence[int]):
        super().__init__()
        self.backbone, self.feature = backbone, head.feature
        from .backbones import run_until
        self._run_until = run_until
        with torch.no_grad():
            probe = next(backbone.parameters()).new_zeros(1, 3, *train_size)
            fmap = run_until(backbone, probe, self.feature)
        self.feature_size = tuple(fmap.shape[-2:])
        self.stride = backbone.output_shape()[self.feature].stride
        self.head = convolutionalize(head.classifier, fmap.shape[1], self.feature_size)

    def forward(self, pixels: Tensor) -> Tensor:
        return self.head(self._run_until(self.backbone, pixels, self.feature))
