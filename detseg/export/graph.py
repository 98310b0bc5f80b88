"""The export graph: a ``Model`` as one traceable function of one image (or, for all-semantic
models, of a batch of one size), traced with ``torch.export``; see ``detseg.export`` for what it
holds and what stays outside."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.transforms import PAD_DIVISOR
from ..modeling.heads import CLASSES, SEMANTIC
from ..modeling.proposals import SelectiveSearchProposals
from ..structures import Batch


class ExportGraph(nn.Module):
    """A ``Model`` as one traceable function of one image (see the module docstring).

    Args:
        model: a ``detseg.modeling.model.Model`` in eval mode.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.eval()
        self.head_names = list(model.heads)
        sources = [h.proposal_source() for h in model.heads.values()]
        self.selective_search = next((p for p in sources if isinstance(p, SelectiveSearchProposals)), None)
        self.needs_proposals = self.selective_search is not None
        # a batch dimension where every head is per-pixel or per-image and no per-image resize
        # runs inside
        self.batched = (all(h.output in (SEMANTIC, CLASSES) for h in model.heads.values())
                        and model.resize is None and model.panoptic is None)

    def output_names(self) -> list[str]:
        names = []
        for name, head in self.model.heads.items():
            if head.output == SEMANTIC:
                names.append(f"{name}.labels")
            elif head.output == CLASSES:
                names.append(f"{name}.scores")
            else:
                names += [f"{name}.boxes", f"{name}.scores", f"{name}.labels"]
                if head.predicts_masks:
                    names.append(f"{name}.masks")
        return names

    def input_names(self) -> list[str]:
        if self.batched:
            return ["images", "file_size"]
        return ["image", "file_size"] + (["proposals"] if self.needs_proposals else [])

    def forward(self, image: Tensor, file_size: Tensor, proposals: Optional[Tensor] = None) -> tuple:
        if self.batched:
            return self.forward_batch(image, file_size)
        h, w = image.shape[1], image.shape[2]
        if self.model.resize is None:
            images = _pad(image[None])
        else:
            # the model resizes (and pads) the image itself; padding it first would only be
            # cropped off again, and would tie the graph to whether the example needed padding
            images = image[None]
        batch = Batch(images=images, image_sizes=[(h, w)],
                      proposals=None if proposals is None else [proposals.float()])
        out = self.model(batch, panoptic=False)  # the runner merges (see detseg.export)
        fh, fw = file_size.to(torch.float64).unbind(0)
        results: list[Tensor] = []
        for name, head in self.model.heads.items():
            pred = out[name]
            if head.output == SEMANTIC:
                results.append(_label_maps(pred, h, w, file_size)[0])
                continue
            if head.output == CLASSES:
                results.append(pred[0])
                continue
            inst = pred[0]
            ih, iw = inst.image_size
            # to_file_pixels' scale factors: file / predicted size, in float64, then the boxes' dtype
            f = torch.stack([fw / iw, fh / ih, fw / iw, fh / ih]).to(inst.boxes.dtype)
            results += [inst.boxes * f, inst.scores, inst.labels]
            if head.predicts_masks:
                results.append(inst.masks)
        return tuple(results)

    def forward_batch(self, images: Tensor, file_size: Tensor) -> tuple:
        """``images`` uint8 ``[B, 3, H, W]`` of one size → per head ``labels [B, h, w]`` (semantic)
        or ``scores [B, K]`` (classify); what ``Model.forward`` does for these heads, without its
        per-image size list (whose length would fix B)."""
        h, w = images.shape[2], images.shape[3]
        padded = _pad(images)
        features = self.model.backbone(self.model.preprocess(padded))
        out = []
        for head in self.model.heads.values():
            pred = head.forward_test(features, Batch(images=padded))
            out.append(pred if head.output == CLASSES else _label_maps(pred, h, w, file_size))
        return tuple(out)


def _pad(images: Tensor) -> Tensor:
    """``[B, 3, H, W]`` zero-padded bottom / right to multiples of 32, as ``collate`` pads a batch."""
    h, w = images.shape[2], images.shape[3]
    hp = (h + PAD_DIVISOR - 1) // PAD_DIVISOR * PAD_DIVISOR
    wp = (w + PAD_DIVISOR - 1) // PAD_DIVISOR * PAD_DIVISOR
    return F.pad(images, (0, wp - w, 0, hp - h))


def _label_maps(logits: Tensor, h, w, file_size: Tensor) -> Tensor:
    """uint8 ``[B, oh, ow]`` labels of ``logits [B, C, Hp, Wp]`` cropped to ``h x w`` and, as
    ``labels_at`` does, upsampled bilinearly to the file's size before the argmax."""
    oh, ow = file_size.tolist()
    torch._check(oh > 0)
    torch._check(ow > 0)
    # The crop as a copy (index_select), not a view: a view of logits that are exactly the padded
    # size is contiguous only when the image needed no padding, and tracing would fix that case.
    rows = torch.arange(h, device=logits.device)
    cols = torch.arange(w, device=logits.device)
    cropped = logits.index_select(2, rows).index_select(3, cols).float()
    up = F.interpolate(cropped, size=(oh, ow), mode="bilinear", align_corners=False)
    return up.argmax(1).to(torch.uint8)


def example_inputs(graph: ExportGraph, size: tuple[int, int] = (320, 416),
                   file_size: Optional[tuple[int, int]] = None) -> tuple:
    """Inputs to trace with: a random image of ``size`` (two for a batched graph: a batch of one
    would be traced as a fixed size of one), the file's size (default: ``size``), and a few
    proposals when needed."""
    g = torch.Generator().manual_seed(0)
    h, w = size
    image = torch.randint(0, 256, ((2,) if graph.batched else ()) + (3, h, w), dtype=torch.uint8,
                          generator=g)
    args: tuple = (image, torch.tensor(file_size or size, dtype=torch.int64))
    if graph.needs_proposals:
        xy = torch.rand(24, 2, generator=g) * torch.tensor([w / 2, h / 2])
        wh = 16 + torch.rand(24, 2, generator=g) * torch.tensor([w / 2, h / 2])
        args += (torch.cat([xy, xy + wh], 1),)
    return args


def trace(graph: ExportGraph, example: tuple, dynamic_size: bool = True) -> torch.export.ExportedProgram:
    """``torch.export`` with the image's height and width (unless ``dynamic_size`` is False), the
    batch of a batched graph and the proposal count dynamic."""
    dyn = torch.export.Dim.DYNAMIC
    image = {1: dyn, 2: dyn} if dynamic_size else {}
    if graph.batched:
        image = {0: dyn, **{d + 1: v for d, v in image.items()}}
    shapes: tuple = (image, None) + (({0: dyn},) if len(example) > 2 else ())
    heads = list(graph.model.heads.values())
    for head in heads:
        head.set_export_mode(True)
    try:
        with torch.no_grad():
            return torch.export.export(graph, example, dynamic_shapes=shapes, strict=False)
    finally:
        for head in heads:
            head.set_export_mode(False)
