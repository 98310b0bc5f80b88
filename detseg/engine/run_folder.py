"""Which run folders ``tools/train.py`` may write: its own run of the same config (``--resume``),
an empty or new folder, or anything with ``--overwrite``; never a folder of the user's files or
another config's run (the output guard, ``detseg.outputs``, with a config digest as identity)."""
from __future__ import annotations

import fnmatch
import glob
import hashlib
import logging
import os
from typing import Iterable, Optional

import yaml

from ..config import to_dict
from ..outputs import OutputDir, OutputRefused, check_not_input, foreign_files, read_manifest
from ..utils import check_output_dir

logger = logging.getLogger(__name__)

TOOL = "train"
# Settings that may change between a run and its --resume without making it another run: where
# and on what it runs, how long it goes on, how it loads data.
_NOT_IDENTITY = {("runtime", "output_dir"), ("runtime", "device"), ("data", "num_workers"),
                 ("solver", "max_iter"), ("solver", "max_minutes")}
# What a training run writes (a folder from before the manifest is recognised by these names).
RUN_FILES = ("model_*.pth", "best.pth", "metrics.jsonl", "curves.png", "config.yaml",
             "init_report.json", "class_counts.json", "coco_results.json", "tb/*", "diagnostics/*")


def _identity_tree(tree: dict) -> dict:
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in tree.items()}
    for section, key in _NOT_IDENTITY:
        if isinstance(out.get(section), dict):
            out[section].pop(key, None)
    return out


def config_digest(cfg) -> str:
    """The run identity of a resolved config: its YAML, less the ``_NOT_IDENTITY`` settings."""
    text = yaml.safe_dump(_identity_tree(to_dict(cfg)), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _first_difference(a, b, prefix: str = "") -> Optional[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            found = _first_difference(a.get(key), b.get(key), f"{prefix}{key}.")
            if found:
                return found
        return None
    return None if a == b else f"{prefix.rstrip('.')} ({b!r} there, {a!r} now)"


def _saved_config(folder: str) -> Optional[dict]:
    try:
        with open(os.path.join(folder, "config.yaml"), encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except (OSError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


def _is_run_file(rel: str) -> bool:
    return any(fnmatch.fnmatch(rel.replace(os.sep, "/"), p) for p in RUN_FILES)


def _has_checkpoint(folder: str) -> bool:
    return bool(glob.glob(os.path.join(folder, "model_*.pth"))) or os.path.isfile(
        os.path.join(folder, "best.pth"))


def claim_run_dir(path: str, cfg, *, resume: bool, overwrite: bool,
                  inputs: Iterable[Optional[str]] = (), claim: bool = True) -> OutputDir:
    """Check that a training run may write into ``path``; create and claim it.

    Args:
        path: the run folder.
        cfg: the resolved config of this run.
        resume: ``--resume``: the folder must be empty, new, or a run of this config.
        overwrite: ``--overwrite``: any folder that is not an input; checkpoints there from an
            earlier run are removed (a later ``--resume`` must not pick them up).
        inputs: what the run reads (config file, annotations, image folders, weights).
        claim: False: check only, write nothing (the ranks of a distributed run that do not write).

    Raises:
        OutputRefused: one line naming the folder, what it holds, and ``--resume`` /
            ``--overwrite`` / another folder as the way on.
    """
    digest = config_digest(cfg)
    own_config = os.path.join(path, "config.yaml")
    # The run's own config.yaml given back as --config (to resume it) is the run's file, not an input.
    check_not_input(path, [p for p in inputs if p and os.path.abspath(p) != os.path.abspath(own_config)],
                    what="--output-dir")
    is_dir = os.path.isdir(path)
    manifest = read_manifest(path) if is_dir else None
    listed = manifest is not None and manifest.get("tool") == TOOL  # a run folder with a manifest
    present = foreign_files(path, TOOL, {"files": {}}) if is_dir else []
    # Files beside the run that are not its own (the user's, an eval/ folder): never listed as
    # the run's, so that they stay foreign to every later check. Without a manifest (a run from
    # before it, once accepted below) every file is the run's.
    not_ours = foreign_files(path, TOOL, manifest) if is_dir and (listed or overwrite) else []
    if present and not overwrite:  # (a folder holding only a manifest or a torn write is empty)
        saved = _saved_config(path)
        if listed:
            same = manifest.get("identity") == digest
        elif saved is not None and all(_is_run_file(r) for r in present) and (
                _has_checkpoint(path) or os.path.isfile(os.path.join(path, "metrics.jsonl"))):
            # a run folder from before the manifest: its config.yaml and its file names
            same = _identity_tree(saved) == _identity_tree(to_dict(cfg))
        else:
            raise OutputRefused(f"{path}: --output-dir holds {len(present)} file(s) that train did "
                                f"not write ({', '.join(present[:3])}); train into a new or empty "
                                f"folder, or pass --overwrite to write beside them")
        if not same:
            diff = _first_difference(_identity_tree(to_dict(cfg)), _identity_tree(saved or {}))
            raise OutputRefused(f"{path}: --output-dir holds a run of another config"
                                f"{': ' + diff + ' differs' if diff else ''}; train into a new or "
                                f"empty folder, or pass --overwrite to replace that run")
        # (another tool's manifest makes every file foreign; no manifest, a run's own folder)
        foreign = not_ours if listed else present if manifest is not None else []
        clash = [r for r in foreign if _is_run_file(r)]
        if clash:
            raise OutputRefused(f"{path}: --output-dir holds {clash[0]}, which this run would write "
                                f"over and which it did not write; move it, or pass --overwrite")
        if not resume and _has_checkpoint(path):
            raise OutputRefused(f"{path}: --output-dir holds a run of this config with checkpoints; "
                                f"--resume continues it, --overwrite starts it over")
    claimed = OutputDir(path, TOOL, digest, not_ours=not_ours)
    if not claim:
        return claimed
    if overwrite and is_dir:
        for stale in glob.glob(os.path.join(path, "model_*.pth")):
            os.remove(stale)
        metrics = os.path.join(path, "metrics.jsonl")
        if os.path.isfile(metrics):
            os.remove(metrics)
    check_output_dir(path)
    claimed.list_files()
    return claimed


__all__ = ["claim_run_dir", "config_digest", "RUN_FILES"]
