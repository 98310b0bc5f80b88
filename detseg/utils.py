"""The few helpers every layer may use: the cache folder and the process's distributed rank.

The bottom of the import order (see ``tests/test_imports.py``): it imports nothing from detseg.
"""
from __future__ import annotations

import os


def default_cache_dir() -> str:
    """Where detseg keeps what it makes once (built extensions, generated data):
    ``$DETSEG_CACHE``, else ``~/.cache/detseg``."""
    return os.environ.get("DETSEG_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "detseg"))


def rank() -> int:
    """This process's rank in the default process group (0 when not distributed)."""
    import torch.distributed as dist
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """Processes in the default process group (1 when not distributed)."""
    import torch.distributed as dist
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
