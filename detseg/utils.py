"""The few helpers every layer may use: the cache folder, atomic file writes, the process's
distributed rank.

The bottom of the import order (see ``tests/test_imports.py``): it imports nothing from detseg.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import tempfile
from typing import IO, Any, Iterator, Optional

__version__ = "0.1.0"  # pyproject.toml's version; exported files record it


class UsageError(ValueError):
    """A device, output path or argument the user gave cannot be used; the message is one line
    naming it (tools print it as ``error: ...`` and exit with status 2)."""


def check_device(device: str) -> str:
    """``device`` checked against this machine: ``"auto"`` resolved to ``cuda`` or ``cpu``.

    Raises:
        UsageError: an unknown device, CUDA without a GPU, a GPU index this machine lacks.
    """
    import torch
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise UsageError(f"unknown device {device!r}: use cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"device {device!r}: CUDA requested but no GPU is available "
                             f"(torch.cuda.is_available() is False)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"device {device!r}: this machine has {torch.cuda.device_count()} GPU(s)")
    elif dev.type != "cpu":
        raise UsageError(f"device {device!r}: detseg runs on cpu or cuda (cuda:N), or auto")
    return device


def check_output_dir(path: str) -> str:
    """Create the folder ``path`` if needed and check that a file can be written in it.

    Raises:
        UsageError: ``path`` is a file, lies under one, or cannot be created or written.
    """
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"{path}: exists and is not a folder; give a folder for the output")
    try:
        os.makedirs(path, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".tmp-probe-", dir=path)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise UsageError(f"{path}: cannot write the output here ({e.strerror or type(e).__name__})") from None
    return path


def next_numbered_dir(root: str) -> str:
    """``root/<n>`` for the next unused number n (1, 2, ...); ``root`` is created.

    Raises:
        UsageError: ``root`` cannot be created or written.
    """
    check_output_dir(root)
    taken = [int(d) for d in os.listdir(root) if d.isdigit()]
    return os.path.join(root, str(max(taken, default=0) + 1))


def _file_mode() -> int:
    """The mode ``open()`` would give a new file under this process's umask."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


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


@contextlib.contextmanager
def atomic_path(path: str, sync: bool = True) -> Iterator[str]:
    """Write ``path`` all or nothing, for writers that take a file name (``cv2.imwrite``): the
    block writes the yielded temp path (same folder, same extension), which then replaces
    ``path`` (after an fsync when ``sync``). A crash or an error at any point leaves the old file
    (or none), never a torn one; the temp file is removed."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.splitext(path)[1], dir=folder)
    os.close(fd)
    os.chmod(tmp, _file_mode())  # mkstemp makes 0600; the file should have the umask's mode
    try:
        yield tmp
        if sync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "wb") -> Iterator[IO]:
    """``atomic_path`` for a file object: the block writes the yielded file (``mode`` ``"wb"``
    or ``"w"``, UTF-8)."""
    with atomic_path(path, sync=False) as tmp:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())


def write_json_atomic(obj: Any, path: str, indent: Optional[int] = None) -> None:
    """``json.dump(obj)`` into ``path`` with ``atomic_write``."""
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=indent)


@contextlib.contextmanager
def quiet_loggers(*names: str, level: int = logging.ERROR) -> Iterator[None]:
    """Hold the loggers ``names`` at ``level`` for the block (records below it dropped), then
    restore their own levels: for libraries that log what detseg already says in one line."""
    loggers = [logging.getLogger(n) for n in names]
    saved = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(level)
    try:
        yield
    finally:
        for lg, old in zip(loggers, saved):
            lg.setLevel(old)


class _Once(argparse._StoreAction):
    """A store option that may be given once: a second value would silently replace the first."""

    def __call__(self, parser, namespace, values, option_string=None):
        given = namespace.__dict__.setdefault("_given_once", set())
        if self.dest in given:
            parser.error(f"{option_string} was given twice; it takes one value (give it once)")
        given.add(self.dest)
        super().__call__(parser, namespace, values, option_string)


def parse_once(parser: argparse.ArgumentParser, argv=None, intermixed: bool = False) -> argparse.Namespace:
    """``parser.parse_args(argv)`` (or ``parse_intermixed_args``) where every option that takes
    one value is an error when repeated (``--input a --input b`` would drop ``a`` without a word).
    argparse's own error: usage, one ``error:`` line, ``SystemExit(2)``."""
    for action in parser._actions:
        if type(action) is argparse._StoreAction and action.option_strings:
            action.__class__ = _Once
    args = (parser.parse_intermixed_args if intermixed else parser.parse_args)(argv)
    args.__dict__.pop("_given_once", None)
    return args
