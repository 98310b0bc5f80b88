"""A checkpoint's export made once and kept in the cache folder (``tools/infer.py --runtime``),
keyed by the checkpoint's path, size and modification time."""
from __future__ import annotations

import functools
import os

from .format import EXPORT_FORMAT


def cached_path(weights: str, fmt: str = "onnx") -> str:
    """Where ``cached_export`` keeps the export of checkpoint ``weights``: detseg's cache,
    ``exports/<hash of the file's bytes>-format<EXPORT_FORMAT>.<fmt>``."""
    from ..utils import default_cache_dir
    stat = os.stat(weights)
    name = f"{_digest(os.path.abspath(weights), stat.st_mtime_ns, stat.st_size)}-format{EXPORT_FORMAT}.{fmt}"
    return os.path.join(default_cache_dir(), "exports", name)


@functools.lru_cache(maxsize=8)
def _digest(path: str, mtime_ns: int, size: int) -> str:
    """First 20 hex digits of the file's SHA-256, read once per (path, mtime, size): infer.py asks
    for the cached path when choosing its backend and again when exporting."""
    import hashlib
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:20]


def cached_export(weights: str, fmt: str = "onnx") -> tuple[str, bool]:
    """The export of checkpoint ``weights`` at ``cached_path``, written the first time.

    Returns:
        (path of the exported file, whether it was already there).
    """
    path = cached_path(weights, fmt)
    if os.path.isfile(path):
        return path, True
    from ..api import load_model
    from . import export
    os.makedirs(os.path.dirname(path), exist_ok=True)
    export(load_model(weights, device="cpu"), path, fmt=fmt)
    return path, False
