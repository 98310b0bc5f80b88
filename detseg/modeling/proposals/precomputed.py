"""Selective-search proposal source: the loader's precomputed boxes, or computed on the fly."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ...structures import Batch
from .selective_search import selective_search


class SelectiveSearchProposals(nn.Module):
    """Proposals for each image of a batch.

    When the data loader attached cached proposals (``batch.proposals``, a list of
    ``Tensor[P_i, 4]`` already resized with the image: see ``tools/proposals.py`` and
    ``CocoDataset(proposals=...)``) they are used as they are, as R-CNN and SPPNet did; otherwise
    (new images at inference) selective search runs on the batch images.

    Args:
        mode: ``"fast"`` or ``"quality"``; max_per_image: keep the first this many.
    """

    def __init__(self, *, mode: str = "fast", max_per_image: int = 2000):
        super().__init__()
        self.mode, self.max_per_image = mode, max_per_image

    def forward(self, features, batch) -> tuple[list[Tensor], dict]:
        batch = Batch.of(batch)  # a plain dict from one's own pipeline, read as a Batch
        given = batch.proposals
        if given is not None:
            # sym_min, not a plain slice bound: an exported graph would otherwise be traced with
            # (and guard on) the example's count being below max_per_image
            return [p[: torch.sym_min(p.shape[0], self.max_per_image)].float() for p in given], {}
        out = []
        for i, (h, w) in enumerate(batch.image_sizes):
            image = batch.images[i, :, :h, :w].permute(1, 2, 0).cpu().numpy()
            out.append(torch.as_tensor(selective_search(image, self.mode, self.max_per_image)))
        return out, {}
