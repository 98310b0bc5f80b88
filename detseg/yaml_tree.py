"""Reading config files into a plain tree: ``yaml.safe_load`` with duplicate keys refused and
alias bombs stopped, ``_base_`` inheritance, ``a.b=c`` overrides, and per dotted key the file (or
"command line") that set it, so that an error can name both.

``detseg.config`` checks the tree against the schema (``load_config`` does both steps).
"""
from __future__ import annotations

import os
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config key or value is wrong; the message names the key and where it came from."""


# Maps a dotted key ("solver.lr") to the file or "command line" that set it.
Sources = dict[str, str]

MAX_BASE_DEPTH = 2


class _UniqueKeySafeLoader(yaml.SafeLoader):
    """``yaml.safe_load``'s loader (plain data only, no Python objects) that refuses a key given
    twice in one mapping. YAML itself keeps the last one silently: a recipe with two ``data:``
    blocks lost its ``data.shapes`` setting that way and trained on other data without a word.
    Keys brought in by a ``<<`` merge may still be overridden, as YAML intends."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: SafeLoader reports it below
                    continue
                if first is not None:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping", node.start_mark,
                        f"found key {key!r} twice (first on line {first + 1})", key_node.start_mark)
                seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


# No config comes near this many values once YAML aliases are expanded; a file that does is an
# alias bomb ("billion laughs": nine anchors of nine aliases each are 9**9 values), which the
# walks over the config (sources, merge, schema) would expand until memory runs out.
MAX_CONFIG_VALUES = 100_000


def check_expanded_size(data: Any, where: str) -> None:
    """Raise ``ConfigError`` when ``data`` would hold more than ``MAX_CONFIG_VALUES`` values with
    its shared (aliased) parts expanded; counted once per distinct object, so in linear time."""
    sizes: dict[int, int] = {}

    def size(obj: Any) -> int:
        if not isinstance(obj, (dict, list)):
            return 1
        if id(obj) in sizes:
            return sizes[id(obj)]
        sizes[id(obj)] = MAX_CONFIG_VALUES + 1  # a cycle (a YAML alias to its own parent)
        items = obj.items() if isinstance(obj, dict) else enumerate(obj)
        total = 1
        for _, value in items:
            total += size(value)
            if total > MAX_CONFIG_VALUES:
                break
        sizes[id(obj)] = total
        return total
    if size(data) > MAX_CONFIG_VALUES:
        raise ConfigError(f"{where}: expands to more than {MAX_CONFIG_VALUES} values through YAML "
                          f"aliases (an alias bomb?); write the values out")


def read_yaml(path: str) -> dict:
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    with open(path, encoding="utf-8") as f:
        try:
            data = yaml.load(f, Loader=_UniqueKeySafeLoader)  # safe: a SafeLoader subclass
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        except ValueError as e:  # int() past Python's digit limit, a date out of range
            raise ConfigError(f"{path}: a value YAML cannot read: {str(e).splitlines()[0]}") from None
    check_expanded_size(data, path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def _record_sources(tree: dict, source: str, sources: Sources, prefix: str = "") -> None:
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        sources[dotted] = source
        if isinstance(value, dict):
            _record_sources(value, source, sources, dotted + ".")


def merge(base: dict, update: dict) -> dict:
    """Recursive merge; mappings merge key by key, anything else in ``update`` replaces. A mapping
    whose ``type`` differs from the one it updates (a head or pooler of another type) replaces it
    whole: the old type's keys would mean nothing to the new one."""
    out = dict(base)
    for key, value in update.items():
        if (isinstance(value, dict) and isinstance(out.get(key), dict)
                and value.get("type", out[key].get("type")) == out[key].get("type")):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def load_yaml_tree(path: str, _depth: int = 0) -> tuple[dict, Sources]:
    """Read ``path`` and its ``_base_`` files (relative to ``path``) into one merged mapping.

    Returns:
        (tree, sources): the merged mapping and, per dotted key, the file that set it.
    """
    data = read_yaml(path)
    bases = data.pop("_base_", [])
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: _base_ must be a file name or a list of file names")
    if bases and _depth >= MAX_BASE_DEPTH:
        raise ConfigError(
            f"{path}: _base_ nesting deeper than {MAX_BASE_DEPTH} levels; flatten the config chain"
        )
    tree: dict = {}
    sources: Sources = {}
    for base in bases:
        base_path = os.path.normpath(os.path.join(os.path.dirname(path), base))
        base_tree, base_sources = load_yaml_tree(base_path, _depth + 1)
        tree = merge(tree, base_tree)
        sources.update(base_sources)
    tree = merge(tree, data)
    _record_sources(data, path, sources)
    return tree, sources


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``"a.b=value"`` into (["a", "b"], parsed value); the value is read as YAML scalar."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key.sub=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    except ValueError as e:  # int() past Python's digit limit: no setting takes such a number
        raise ConfigError(f"override {key}: a value YAML cannot read ({str(e).splitlines()[0]})") from None
    check_expanded_size(value, f"override {key}")
    return key.split("."), value


def apply_overrides(tree: dict, sources: Sources, overrides: list[str]) -> dict:
    """Merge ``key.sub=value`` strings into ``tree``; the schema check happens in ``from_dict``."""
    tree = merge({}, tree)
    for text in overrides:
        parts, value = parse_override(text)
        node = tree
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[parts[-1]] = value
        sources[".".join(parts)] = "command line"
    return tree


def where_set(key: str, sources: Sources) -> str:
    # A key that a file did not set directly inherits the source of its nearest set parent.
    probe = key
    while probe:
        if probe in sources:
            return sources[probe]
        probe = probe.rpartition(".")[0]
    return "defaults"
