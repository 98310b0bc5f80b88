"""Feature maps and filters as pictures: what a layer responds to on an image ("the whiter, the
stronger the feature") and what the first layer's filters look like."""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn


def find_module(model: nn.Module, name: str) -> nn.Module:
    """The module at path ``name`` (``model.named_modules()``' names).

    Raises:
        KeyError: naming the closest paths, so a typo gets an answer.
    """
    modules = dict(model.named_modules())
    if name in modules:
        return modules[name]
    import difflib
    close = difflib.get_close_matches(name, [n for n in modules if n], n=5, cutoff=0.5)
    raise KeyError(f"no layer {name!r} in this model" + (f"; did you mean {', '.join(close)}?" if close
                                                         else "; `explain layers` lists them"))


def head_of_type(model: nn.Module, kind: type, head: Optional[str], view: str) -> tuple[str, nn.Module]:
    """(name, head) of the model's first head of class ``kind``, or of the one named ``head``.

    Raises:
        ValueError: naming the view and the heads the model has.
    """
    names = [n for n, h in model.heads.items() if isinstance(h, kind)]
    if head is not None:
        if head not in names:
            raise ValueError(f"head {head!r} is not a {kind.__name__}; those here: {names or 'none'}")
        return head, model.heads[head]
    if not names:
        raise ValueError(f"the {view} view needs a {kind.__name__}; this model has "
                         + ", ".join(f"{n} ({type(h).__name__})" for n, h in model.heads.items()))
    return names[0], model.heads[names[0]]


def capture(model: nn.Module, run, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """``{name: first tensor output of that module}`` during ``run()`` (its last call)."""
    got: dict[str, torch.Tensor] = {}
    handles = []
    for name in names:
        def record(module, inputs, output, name=name):
            t = output
            while isinstance(t, (tuple, list)) and t:
                t = t[0]
            if isinstance(t, dict) and t:
                t = list(t.values())[-1]
            if isinstance(t, torch.Tensor):
                got[name] = t.detach()
        handles.append(find_module(model, name).register_forward_hook(record))
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    missing = [n for n in names if n not in got]
    if missing:
        raise ValueError(f"layer(s) {missing} did not produce a tensor on this input")
    return got


def tile_grid(tiles: Sequence[np.ndarray], columns: Optional[int] = None, gap: int = 2,
              fill: int = 255) -> np.ndarray:
    """Equal-size uint8 tiles ``[h, w]`` or ``[h, w, 3]`` in a grid, ``gap`` pixels apart → ``[H, W, 3]``."""
    if not tiles:
        raise ValueError("no tiles to draw")
    tiles = [t if t.ndim == 3 else np.repeat(t[:, :, None], 3, axis=2) for t in tiles]
    h, w = tiles[0].shape[:2]
    cols = columns or math.ceil(math.sqrt(len(tiles)))
    rows = math.ceil(len(tiles) / cols)
    grid = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap, 3), fill, np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        grid[r * (h + gap): r * (h + gap) + h, c * (w + gap): c * (w + gap) + w] = t
    return grid


def _upscale(a: np.ndarray, min_side: int) -> np.ndarray:
    """Nearest-neighbour enlargement so that each cell stays a visible square."""
    f = max(1, math.ceil(min_side / max(1, min(a.shape[:2]))))
    return np.repeat(np.repeat(a, f, axis=0), f, axis=1)


def feature_grid(fmap: torch.Tensor, max_channels: int = 64, min_side: int = 48) -> tuple[np.ndarray, list[int]]:
    """One image's feature maps ``[C, h, w]`` as a grey grid, strongest channels first.

    Channels are sorted by mean activation and the first ``max_channels`` shown on one shared
    scale (the shown maps' minimum black, maximum white), so that a brighter tile is a stronger
    response than a darker one elsewhere in the grid, not only within its own tile.

    Returns:
        (uint8 ``[H, W, 3]`` grid, the channel index of each tile in order).
    """
    if fmap.dim() == 4:
        fmap = fmap[0]
    if fmap.dim() != 3:
        raise ValueError(f"a feature map is [C, h, w], got shape {tuple(fmap.shape)}")
    fmap = fmap.float().cpu()
    order = torch.argsort(fmap.mean(dim=(1, 2)), descending=True)[:max_channels]
    shown = fmap[order]
    lo, hi = float(shown.min()), float(shown.max())
    scaled = ((shown - lo) / (hi - lo) * 255 if hi > lo else torch.zeros_like(shown)).round()
    tiles = [_upscale(t.to(torch.uint8).numpy(), min_side) for t in scaled]
    return tile_grid(tiles), [int(c) for c in order]


def first_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    """(path, module) of the first 2-D convolution that reads 3 channels (the image)."""
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d) and m.in_channels == 3:
            return name, m
    raise ValueError("the model has no convolution over the image's 3 channels")


def filter_grid(conv: nn.Conv2d, min_side: int = 36) -> np.ndarray:
    """The filters of a convolution over RGB as colour tiles ``[H, W, 3]``: 0 grey, every filter
    on one shared symmetric scale (the largest absolute weight saturates)."""
    w = conv.weight.detach().float().cpu()
    if w.shape[1] != 3:
        raise ValueError(f"filters are drawn for a convolution over 3 channels, this one reads {w.shape[1]}")
    scale = float(w.abs().max()) or 1.0
    tiles = (w / scale * 127.5 + 127.5).clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return tile_grid([_upscale(t, min_side) for t in tiles])
