"""detseg heads in your own pipeline: a torchvision MobileNetV3 backbone of your own, detseg's
RPN + SPPNet / Fast R-CNN head with a Mask head on top, trained in a plain PyTorch loop.

    python examples/custom_pipeline.py --iterations 50

Nothing here goes through detseg's config, Model or Trainer: the heads take tensors and a batch
dict (``images`` uint8 ``[B, 3, H, W]``, ``image_sizes``, ``targets`` with ``boxes`` xyxy,
``labels`` 0..K-1 and ``masks`` ``[N, H, W]``), and return losses or ``Instances``.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
import torchvision
from torch import nn

from detseg.data.shapes import CLASSES, render_image
from detseg.modeling.backbones import ShapeSpec
from detseg.modeling.heads import RegionHead
from detseg.modeling.poolers import RoIPoolConfig, build_pooler
from detseg.modeling.heads.mask import MaskHead
from detseg.modeling.proposals import RPN
from detseg.ops.paste_masks import paste_masks


class MobileNetC4(nn.Module):
    """Your backbone: MobileNetV3-Small cut at stride 16; tells the heads its channels and stride."""

    def __init__(self):
        super().__init__()
        self.body = torchvision.models.mobilenet_v3_small().features[:9]  # stride 16
        with torch.no_grad():
            channels = self.body(torch.zeros(1, 3, 64, 64)).shape[1]
        self._shape = {"c4": ShapeSpec(channels, 16)}

    def output_shape(self) -> dict:
        return self._shape

    def forward(self, x: torch.Tensor) -> dict:
        return {"c4": self.body(x)}


def make_batch(indices: list[int]) -> dict:
    """Images and targets in the batch format the heads read (here from detseg's shapes renderer)."""
    images, targets, sizes = [], [], []
    for i in indices:
        image, _, instances = render_image(seed=1, split="train", index=i)
        masks = np.stack([inst["mask"] for inst in instances])
        boxes = []
        for m in masks:
            ys, xs = np.nonzero(m)
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        images.append(torch.from_numpy(image).permute(2, 0, 1))
        sizes.append(image.shape[:2])
        targets.append({"boxes": torch.tensor(boxes, dtype=torch.float32),
                        "labels": torch.tensor([inst["label"] for inst in instances]),
                        "masks": torch.from_numpy(masks)})
    hp = max(h for h, _ in sizes) + 31 & ~31
    wp = max(w for _, w in sizes) + 31 & ~31
    batch = torch.zeros(len(images), 3, hp, wp, dtype=torch.uint8)
    for b, im in zip(batch, images):
        b[:, : im.shape[1], : im.shape[2]] = im
    return {"images": batch, "image_sizes": sizes, "targets": targets}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--iterations", type=int, default=50)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    backbone = MobileNetC4()
    shapes = backbone.output_shape()
    rpn = RPN(in_channels=shapes["c4"].channels, features=["c4"], strides=[16],
              anchor_sizes=[[16, 32, 64, 128]], post_nms_top_n=(300, 100))
    mask = MaskHead(in_shapes=shapes, num_classes=len(CLASSES), conv_dims=(64, 64))
    pooler = build_pooler(RoIPoolConfig(output_size=7), shapes, "c4")  # Fast R-CNN's RoI pooling
    head = RegionHead(proposals=rpn, pooler=pooler, num_classes=len(CLASSES), fc_dims=(256, 256),
                      mask_head=mask)
    params = list(backbone.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255

    for it in range(args.iterations):  # your loop, your optimiser, your logging
        batch = make_batch([2 * it % 40, (2 * it + 1) % 40])
        features = backbone((batch["images"].float() - mean) / std)
        losses = head.forward_train(features, batch)
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        print(f"iter {it}: " + " ".join(f"{k} {v.item():.3f}" for k, v in losses.items()), flush=True)

    backbone.eval()
    head.eval()
    batch = make_batch([0])
    with torch.no_grad():
        inst = head.forward_test(backbone((batch["images"].float() - mean) / std), batch)[0]
    full = paste_masks(inst.masks, inst.boxes, batch["image_sizes"][0])  # [N, H, W] bool
    print(f"test image: {len(inst)} detections, masks {tuple(full.shape)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
