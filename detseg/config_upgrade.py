"""Old config layouts read into the current one when a config (or a checkpoint's stored config)
loads, each with a one-line notice saying what it was read as:

- the old head layout: ``model.heads`` a list of head names, each head type reading a shared
  section (``heads: [spp]`` with ``roi``, ``proposals``, ``mask`` (``enabled``), ``fcn``,
  ``sliding_window``): each old name becomes a head of that name (so checkpoint keys
  ``heads.spp.*`` still fit) with its sections;
- a region head's old pooler keys: ``pooler`` a string (``spp``, ``roi_pool``, ``roi_align``) with
  ``levels``, ``mapping``, ``aligned``, ``sampling_ratio`` and ``multiscale_features`` beside it,
  become the tagged ``pooler`` section holding only the keys its type uses (``levels[0]`` is
  the output size of RoI pooling and RoIAlign; a one-level SPP with Fast R-CNN's mapping is RoI
  pooling; ``multiscale_features`` made it RoIAlign from those maps).
"""
from __future__ import annotations

import dataclasses
import logging

from .yaml_tree import ConfigError, Sources, merge, where_set

_logger = logging.getLogger(__name__)

LEGACY_TYPES = {"fcn": "fcn", "sliding_window": "sliding_window", "rcnn": "rcnn", "spp": "region"}
LEGACY_SECTIONS = ("fcn", "sliding_window", "roi", "proposals", "mask")

def _legacy_head(type_name: str, sections: dict, where: str, head_configs: dict) -> dict:
    """The settings of one head of ``type_name`` from the old shared sections."""
    fields = {f.name for f in dataclasses.fields(head_configs[type_name])}
    if type_name == "region":  # read below as the pooler section
        fields |= set(OLD_POOLER_KEYS)
    head: dict = {}
    section = {"fcn": "fcn", "sliding_window": "sliding_window"}.get(type_name, "roi")
    head.update({k: v for k, v in (sections.get(section) or {}).items() if k in fields})
    if "proposals" in fields and "proposals" in sections:
        head["proposals"] = sections["proposals"]
    mask = dict(sections.get("mask") or {})
    if mask.pop("enabled", False) and type_name in ("region", "rcnn"):
        if "mask" not in fields:
            raise ConfigError(f"config key 'model.mask' (from {where}): the mask branch needs a region "
                              f"head on shared features (type: region), not {type_name}")
        head["mask"] = mask
    return {**head, "type": type_name}


def upgrade_head_layout(tree: dict, sources: Sources, head_configs: dict) -> dict:
    """``tree`` with the old head layout (see ``LEGACY_TYPES``) rewritten into ``model.heads``;
    logs one line when it rewrote anything."""
    model = tree.get("model")
    if not isinstance(model, dict):
        return tree
    heads = model.get("heads")
    sections = {k: model[k] for k in LEGACY_SECTIONS if k in model}
    if not isinstance(heads, list) and not sections:
        return tree
    where = where_set("model.heads" if isinstance(heads, list) else f"model.{next(iter(sections))}", sources)
    for name, value in sections.items():
        if not isinstance(value, dict):
            raise ConfigError(f"config key 'model.{name}' (from {where_set('model.' + name, sources)}): "
                              f"expected a mapping, got {value!r}")
    if isinstance(heads, list) or heads is None:
        names = ["fcn"] if heads is None else heads  # the old default: one FCN head
        new = {}
        for name in names:
            if name not in LEGACY_TYPES:
                raise ConfigError(f"config key 'model.heads' (from {where}): unknown head {name!r}; "
                                  f"one of {', '.join(LEGACY_TYPES)} (old layout) or a mapping of "
                                  f"name to settings with a `type`")
            new[name] = _legacy_head(LEGACY_TYPES[name], sections, where, head_configs)
    elif isinstance(heads, dict):  # the new layout, with old sections (say, overrides) on top
        new = {}
        for name, head in heads.items():
            kind = head.get("type") if isinstance(head, dict) else None
            new[name] = (merge(head, _legacy_head(kind, sections, where, head_configs)) if kind in LEGACY_TYPES.values()
                         else head)
    else:
        return tree  # the schema check reports it
    _logger.warning("%s: old head layout (model.heads as a list, model.roi / proposals / mask / fcn / "
                    "sliding_window); read as model.heads: %s", where,
                    {n: h["type"] for n, h in new.items() if isinstance(h, dict)})
    model = {k: v for k, v in model.items() if k not in LEGACY_SECTIONS}
    model["heads"] = new
    return {**tree, "model": model}


OLD_POOLER_KEYS = ("pooler", "levels", "mapping", "aligned", "sampling_ratio", "multiscale_features")
OLD_LEVELS = [6, 3, 2, 1]  # the old default of ``levels``


def _new_pooler(old: dict, key: str, sources: Sources) -> dict:
    """The ``pooler`` section that a region head's old pooler keys ``old`` meant."""
    kind = old.get("pooler", "spp")
    levels = old.get("levels", OLD_LEVELS)
    if kind not in ("spp", "roi_pool", "roi_align"):
        raise ConfigError(f"config key '{key}.pooler' (from {where_set(key + '.pooler', sources)}): "
                          f"unknown pooler {kind!r}; write pooler: {{type: spp | roi_pool | roi_align, ...}}")
    if not isinstance(levels, list) or not levels:
        raise ConfigError(f"config key '{key}.levels' (from {where_set(key + '.levels', sources)}): "
                          f"expected a list of int, got {levels!r}")
    if isinstance(old.get("pooler"), str) and "levels" not in old:
        # its size came from levels' default, [6, 3, 2, 1], or (a command-line override of a new
        # config) from a pooler section it replaced: ambiguous, so asked for
        raise ConfigError(f"config key '{key}.pooler' (from {where_set(key + '.pooler', sources)}): "
                          f"pooler: {old['pooler']} without levels; write pooler: {{type: {old['pooler']}, "
                          + ("levels: [L1, L2, ...]}" if old["pooler"] == "spp" else "output_size: N}"))
    features = old.get("multiscale_features")
    mapping = old.get("mapping", "sppnet")
    if features or kind == "roi_align":
        new = {"type": "roi_align", "output_size": levels[0], "sampling_ratio": old.get("sampling_ratio", 2),
               "aligned": old.get("aligned", False)}
        return {**new, "features": features} if features else new
    if kind == "roi_pool" or (len(levels) == 1 and mapping == "fast_rcnn"):
        return {"type": "roi_pool", "output_size": levels[0]}
    return {"type": "spp", "levels": levels, "mapping": mapping}


def upgrade_poolers(tree: dict, sources: Sources) -> dict:
    """``tree`` with each region head's old pooler keys (``OLD_POOLER_KEYS``) rewritten into its
    ``pooler`` section; logs one line per head it rewrote."""
    heads = (tree.get("model") or {}).get("heads") if isinstance(tree.get("model"), dict) else None
    if not isinstance(heads, dict):
        return tree
    new_heads = {}
    for name, head in heads.items():
        if not isinstance(head, dict) or head.get("type") != "region":
            new_heads[name] = head
            continue
        old = {k: head[k] for k in OLD_POOLER_KEYS if k in head}
        if isinstance(old.get("pooler"), dict):
            old.pop("pooler")
            if old:
                key = f"model.heads.{name}.{next(iter(old))}"
                raise ConfigError(f"config key '{key}' (from {where_set(key, sources)}): {sorted(old)} "
                                  f"belong in the pooler section now: write model.heads.{name}.pooler."
                                  f"{next(iter(old))} (see detseg.modeling.poolers for each type's keys)")
        if not old:
            new_heads[name] = head
            continue
        key = f"model.heads.{name}"
        pooler = _new_pooler(old, key, sources)
        where = where_set(f"{key}.{next(iter(old))}", sources)
        sources[f"{key}.pooler"] = where
        _logger.warning("%s: old pooler keys of %s (%s); read as pooler: %s", where, key,
                        ", ".join(f"{k}: {v}" for k, v in old.items()), pooler)
        new_heads[name] = {**{k: v for k, v in head.items() if k not in OLD_POOLER_KEYS}, "pooler": pooler}
    return {**tree, "model": {**tree["model"], "heads": new_heads}}


def upgrade_tree(tree: dict, sources: Sources, head_configs: dict) -> dict:
    """``tree`` with every old layout above read into the current one (``head_configs``: the
    registered head types' settings dataclasses)."""
    return upgrade_poolers(upgrade_head_layout(tree, sources, head_configs), sources)
