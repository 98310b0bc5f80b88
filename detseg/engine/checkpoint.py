"""Checkpoints: written atomically, read with ``torch.load(weights_only=True)``.

A checkpoint holds only tensors and plain Python values: model / optimizer / scheduler / grad
scaler states, iteration, RNG states, best metric, the resolved config as a dict, class names and
the label map (contiguous label → dataset category id).
"""
from __future__ import annotations

import contextlib
import glob
import logging
import os
import pickle
import random
import re
from typing import Optional

import numpy as np
import torch

from ..utils import atomic_write

logger = logging.getLogger(__name__)
_ITER_RE = re.compile(r"model_(\d+)\.pth$")


class CheckpointError(RuntimeError):
    """A checkpoint could not be read or does not fit; the message names the file."""


def save_atomic(obj: dict, path: str) -> None:
    """``torch.save`` with ``utils.atomic_write``: a crash at any point leaves either the old file
    or the new one, never a torn one."""
    with atomic_write(path) as f:
        torch.save(obj, f)


def load_checkpoint(path: str) -> dict:
    """Read a checkpoint safely; code hidden in it is refused, never run."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: checkpoint not found")
    with open(path, "rb") as f:
        magic = f.read(4)
    # torch.save writes a zip archive (PK..) or, in the legacy format, a pickle (0x80 ...)
    if not (magic.startswith(b"PK\x03\x04") or magic[:1] == b"\x80"):
        raise CheckpointError(f"{path}: not a readable checkpoint (not a file torch.save wrote)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: refused: the file contains Python objects other than tensors and plain "
            f"values (it could run code when loaded). Only load checkpoints you trust; detseg "
            f"never unpickles code. ({str(e).splitlines()[0]})") from None
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict, got {type(obj).__name__}")
    return obj


def rng_state() -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached": float(cached)}}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached"]))


def checkpoints_newest_first(folder: str) -> list[str]:
    found = []
    for p in glob.glob(os.path.join(folder, "model_*.pth")):
        m = _ITER_RE.search(p)
        if m:
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found, reverse=True)]


def newest_loadable(folder: str) -> Optional[tuple[str, dict]]:
    """The newest ``model_*.pth`` in ``folder`` that loads, skipping (and reporting) broken ones."""
    for path in checkpoints_newest_first(folder):
        try:
            return path, load_checkpoint(path)
        except CheckpointError as e:
            logger.warning("skipping unreadable checkpoint: %s", e)
    return None


def prune(folder: str, keep: int) -> None:
    for path in checkpoints_newest_first(folder)[keep:]:
        os.unlink(path)


def remove_partial_writes(folder: str) -> int:
    """Remove the temp files (``.tmp-*``) of writes a killed process never finished; returns
    how many. Only for a run folder no other process is writing to."""
    stale = glob.glob(os.path.join(folder, ".tmp-*"))
    for path in stale:
        with contextlib.suppress(OSError):
            os.remove(path)
    return len(stale)


def fit_report(model: torch.nn.Module, state: dict) -> Optional[str]:
    """None when ``state`` fits ``model`` exactly, else one line saying what does not fit."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(getattr(state[k], "shape", ()))]
    if not (missing or unexpected or shapes):
        return None
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
    if shapes:
        k = shapes[0]
        parts.append(f"{len(shapes)} shape mismatches (e.g. {k}: file {tuple(state[k].shape)} vs "
                     f"model {tuple(own[k].shape)})")
    return "; ".join(parts)
