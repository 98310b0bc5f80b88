"""The output guard: every file a tool writes goes through it, so that nothing the user made is
replaced.

Three rules, checked before the first byte is written:

1. An output is never an input, never holds one and never lies inside one (an input folder of
   images, the checkpoint read, the config, the annotation file), compared after resolving
   symbolic links and, for existing files, by device and inode (hard links).
2. An existing output folder is written only when it is empty, or when every file in it was
   written by the same tool (the manifest ``.detseg-manifest.json`` that the tool leaves lists
   them with their sizes; one the user added or changed is not the tool's), or when the user
   says ``--overwrite``.
3. An existing single output file is replaced only when the same tool wrote it (``ours``: a
   test of the file's content, e.g. the metadata an export carries) or with ``--overwrite``.

A refusal is a ``OutputRefused`` (a ``UsageError``: tools print its one line and exit 2) naming
the path, what would be lost, and the way on.
"""
from __future__ import annotations

import json
import os
import time
from typing import Callable, Iterable, Optional

from .utils import UsageError, check_output_dir, write_json_atomic

MANIFEST = ".detseg-manifest.json"
MANIFEST_VERSION = 1


class OutputRefused(UsageError):
    """Writing the output would replace or mix with something the user made (one line)."""


def _real(path: str) -> str:
    return os.path.realpath(os.path.abspath(os.path.expanduser(path)))


def _inside(child: str, parent: str) -> bool:
    """Whether real path ``child`` lies strictly inside real path ``parent``."""
    return child != parent and child.startswith(parent.rstrip(os.sep) + os.sep)


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_not_input(output: str, inputs: Iterable[Optional[str]], *, what: str = "output") -> None:
    """Refuse an ``output`` path that is, holds, or lies inside one of ``inputs``.

    Args:
        output: the file or folder about to be written.
        inputs: every file and folder the command reads (``None`` entries are skipped).
        what: how the message names the output (``--output``, ``--out``, ...).

    Raises:
        OutputRefused: naming both paths.
    """
    out = _real(output)
    for given in inputs:
        if not given:
            continue
        inp = _real(given)
        if out == inp or _same_file(out, inp):
            raise OutputRefused(f"{output}: {what} is the input {given}; writing it would replace "
                                f"what the command reads; choose another {what}")
        if _inside(inp, out):
            raise OutputRefused(f"{output}: {what} holds the input {given}; writing there could "
                                f"replace it; choose a {what} outside the inputs")
        if _inside(out, inp):
            raise OutputRefused(f"{output}: {what} lies inside the input folder {given}; the "
                                f"outputs would mix with the inputs; choose a {what} outside it")


def _files(folder: str) -> dict[str, os.stat_result]:
    """Every file under ``folder`` (recursive), relative path -> stat; the manifest and unfinished
    atomic writes (``.tmp-*``, removed by the next run) left out."""
    found = {}
    for root, dirs, names in os.walk(folder):
        dirs.sort()
        for name in names:
            if name == MANIFEST or name.startswith(".tmp-"):
                continue
            full = os.path.join(root, name)
            try:
                found[os.path.relpath(full, folder)] = os.lstat(full)
            except OSError:
                continue
    return found


def read_manifest(folder: str) -> Optional[dict]:
    """The folder's manifest, or None when it has none (or one that does not parse)."""
    try:
        with open(os.path.join(folder, MANIFEST), encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
        return None
    return data


def foreign_files(folder: str, tool: str, manifest: Optional[dict] = None) -> list[str]:
    """The files under ``folder`` that ``tool`` did not write, by its manifest: not listed, or
    changed since (another size). While a run is unfinished (a killed one), a file it made after
    its last listing, newer than that listing, counts as its own.

    Returns:
        relative paths, sorted; all of them when the manifest is missing or another tool's.
    """
    manifest = read_manifest(folder) if manifest is None else manifest
    present = _files(folder)
    if manifest is None or manifest.get("tool") != tool:
        return sorted(present)
    listed = manifest["files"]
    since = int(manifest.get("listed_at_ns", 0))
    open_run = not manifest.get("complete", False)
    return sorted(rel for rel, st in present.items()
                  if not ((rel in listed and listed[rel] == st.st_size)
                          or (open_run and st.st_mtime_ns >= since)))


class OutputDir:
    """A folder claimed by one tool for its outputs; ``list_files`` records what it wrote.

    Build it with ``claim_dir``. ``path`` is the folder.
    """

    def __init__(self, path: str, tool: str, identity: Optional[str] = None,
                 not_ours: Iterable[str] = ()):
        self.path, self.tool, self.identity = path, tool, identity
        # Files --overwrite let the tool write beside: not listed as the tool's unless it writes
        # them, so that the next run without --overwrite is refused again.
        self.not_ours = {rel: _stamp(os.path.join(path, rel)) for rel in not_ours}

    def file(self, name: str) -> str:
        """``path/name``: a file this tool is about to write in the folder."""
        return os.path.join(self.path, name)

    def list_files(self, complete: bool = False) -> None:
        """Rewrite the manifest with every file now in the folder (call it after writing, and
        with ``complete=True`` when the tool is done: a file that appears later is not the
        tool's)."""
        # Taken before the scan: a file written while scanning is newer than it, so still the
        # run's own if the run is killed before the next listing.
        now = time.time_ns()
        files = {rel: st.st_size for rel, st in _files(self.path).items()
                 if self.not_ours.get(rel) != (st.st_size, st.st_mtime_ns)}
        write_json_atomic({"version": MANIFEST_VERSION, "tool": self.tool, "identity": self.identity,
                           "complete": complete, "listed_at_ns": now, "files": files},
                          os.path.join(self.path, MANIFEST), indent=0)


def _stamp(path: str) -> Optional[tuple[int, int]]:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def _listing(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def claim_dir(path: str, tool: str, *, inputs: Iterable[Optional[str]] = (), overwrite: bool = False,
              identity: Optional[str] = None, what: str = "--output") -> OutputDir:
    """Check that ``tool`` may write into folder ``path``, create it, and mark it as the tool's.

    Args:
        path: the output folder.
        tool: the writer's name (``infer``, ``eval``, ...), kept in the manifest.
        inputs: every file and folder the command reads (see ``check_not_input``).
        overwrite: the user's ``--overwrite``: files in the folder may be replaced.
        identity: kept in the manifest (a config digest), for tools with rules of their own.
        what: the option that named the folder, for the messages.

    Raises:
        OutputRefused: the folder is an input, holds one or lies in one, or holds files this
            tool did not write (named, with ``--overwrite`` as the way on).
        UsageError: the folder cannot be created or written.
    """
    check_not_input(path, inputs, what=what)
    theirs = foreign_files(path, tool) if os.path.isdir(path) else []
    if theirs and not overwrite:
        raise OutputRefused(
            f"{path}: {what} already holds {len(theirs)} file(s) that {tool} did not write "
            f"({_listing(theirs)}); they would be lost or mixed in: choose an empty or new "
            f"folder, or pass --overwrite")
    check_output_dir(path)
    claimed = OutputDir(path, tool, identity, not_ours=theirs)
    claimed.list_files()
    return claimed


def check_output_file(path: str, *, inputs: Iterable[Optional[str]] = (), overwrite: bool = False,
                      ours: Optional[Callable[[str], bool]] = None, what: str = "--output",
                      kind: str = "file") -> str:
    """Check that a single output file may be written at ``path``.

    Args:
        path: the file about to be written (atomically, by the caller).
        inputs: every file and folder the command reads: ``path`` may not be one, nor lie in one.
        overwrite: the user's ``--overwrite``: an existing file (not an input) may be replaced.
        ours: whether an existing file at ``path`` is one this tool wrote (then it is replaced).
        what: the option that named the file, for the messages.
        kind: what the tool writes (``ONNX model``), for the messages.

    Returns:
        ``path``.

    Raises:
        OutputRefused: ``path`` is an input or lies in one (even with ``overwrite``), is a folder,
            or is an existing file this tool did not write and ``overwrite`` is not given.
        UsageError: the folder it goes in does not exist or is not writable.
    """
    check_not_input(path, inputs, what=what)
    if os.path.isdir(path):
        raise OutputRefused(f"{path}: {what} is a folder; {what} names the {kind} to write")
    if os.path.lexists(path) and not overwrite and not (ours is not None and _safe(ours, path)):
        raise OutputRefused(f"{path}: {what} exists and is not a {kind} this tool wrote; replacing "
                            f"it would lose it: choose another {what}, or pass --overwrite")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise UsageError(f"{path}: its folder does not exist or is not writable")
    return path


def json_written_by(tool: str) -> Callable[[str], bool]:
    """A recogniser for ``check_output_file``: a JSON object whose ``"written_by"`` is ``tool``
    (what ``stamp`` puts in)."""
    def test(path: str) -> bool:
        if os.path.getsize(path) > 64 << 20:  # no JSON this project writes is that large
            return False
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return isinstance(data, dict) and data.get("written_by") == tool
    return test


def stamp(obj: dict, tool: str) -> dict:
    """``obj`` with ``"written_by": tool`` first, so that a later run may replace the file."""
    return {"written_by": tool, **obj}


def _safe(test: Callable[[str], bool], path: str) -> bool:
    try:
        return bool(test(path))
    except Exception:  # a recogniser that cannot read the file: not ours
        return False


__all__ = ["OutputRefused", "OutputDir", "claim_dir", "check_output_file", "check_not_input",
           "foreign_files", "read_manifest", "json_written_by", "stamp", "MANIFEST"]
