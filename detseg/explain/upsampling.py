"""What FCN's skips and deconvolutions do: the label map after each stage (32s, 16s, 8s) and each
learned deconvolution kernel beside the bilinear kernel it started from."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..modeling.heads.fcn import FCNHead, bilinear_kernel
from .features import head_of_type


@dataclass
class Stage:
    stride: int
    labels: np.ndarray  # uint8 [h, w] at the input size: 0 background, k + 1 class k
    scores: tuple  # (h', w') of the stage's score map before upsampling


@dataclass
class Kernel:
    name: str  # module path of the deconvolution
    factor: int
    learned: np.ndarray  # [2f, 2f]: the mean over classes of each class's own (c -> c) kernel
    bilinear: np.ndarray  # [2f, 2f]: its initialisation
    change: float  # ||W - W_bilinear|| / ||W_bilinear|| over the whole [K+1, K+1, 2f, 2f] weight


def fcn_head(model: nn.Module, head: str | None = None) -> tuple[str, FCNHead]:
    """(name, head) of the model's FCN head (``head`` names one)."""
    return head_of_type(model, FCNHead, head, "upsampling")


@torch.no_grad()
def upsampling_stages(model: nn.Module, batch, head: str | None = None) -> tuple[list[Stage], list[Kernel]]:
    """The label map after each of the FCN head's stages on the batch's first image, each score
    map upsampled bilinearly to the input; and its deconvolution kernels."""
    name, fcn = fcn_head(model, head)
    model.eval()
    pixels = model.preprocess(batch.images)
    features = model.backbone(pixels)
    hp, wp = pixels.shape[-2:]
    h, w = batch.image_sizes[0]
    stages = []
    for stride, x in fcn.score_stages(features):
        up = F.interpolate(x[:1].float(), size=(hp, wp), mode="bilinear", align_corners=False)
        labels = up[0].argmax(0)[:h, :w].to(torch.uint8).cpu().numpy()
        stages.append(Stage(stride, labels, tuple(x.shape[-2:])))
    kernels = []
    for path, m in fcn.named_modules():
        deconv = getattr(m, "deconv", None)
        if not isinstance(deconv, nn.ConvTranspose2d):
            continue
        weight = deconv.weight.detach().float().cpu()
        start = bilinear_kernel(weight.shape[0], m.factor)
        diagonal = weight[range(weight.shape[0]), range(weight.shape[0])].mean(0)
        change = float((weight - start).norm() / start.norm())
        kernels.append(Kernel(f"heads.{name}.{path}", m.factor, diagonal.numpy(),
                              start[0, 0].numpy(), change))
    return stages, kernels
