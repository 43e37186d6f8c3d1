"""Knobs that are keys of a task's config file (YAML, JSON or TOML), named by dotted
paths (`optimizer.lr`), read and rewritten without running anything.

A candidate's config is hostile text: it is size-capped before parsing, nesting is
capped, YAML anchors and aliases are refused (an alias bomb expands exponentially) and
only the safe loader's scalar types are read. A rewrite changes only the value's text
where the format allows (YAML and TOML keep comments and layout; JSON has none to keep
and is written back with its own indent), then reads the result again to prove it holds
the new value.
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from collections.abc import Collection, Iterator, Mapping
from typing import Any

import tomlkit
import tomlkit.exceptions
import yaml

from trainer.knobs import KnobError, KnobValue

FORMATS = {".yaml": "yaml", ".yml": "yaml", ".json": "json", ".toml": "toml"}
MAX_CONFIG_BYTES = 256 << 10
MAX_DEPTH = 32
MAX_NODES = 20_000
Scalar = int | float | bool | str
_KEY_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_\-]{0,63}$")


class ConfigError(ValueError):
    """The config does not parse, is over a cap, or a key is not a scalar."""


def valid_path(name: str) -> bool:
    """A dotted key path of plain keys (letters, digits, `_`, `-`), at most 8 deep."""
    parts = name.split(".")
    return len(parts) <= 8 and all(_KEY_PART.match(p) for p in parts)


def format_of(path: str) -> str | None:
    """The config format of a file name, or None when it is not a config file."""
    for suffix, kind in FORMATS.items():
        if path.lower().endswith(suffix):
            return kind
    return None


def _size(source: str) -> None:
    if len(source.encode()) > MAX_CONFIG_BYTES:
        raise ConfigError(f"the config is over {MAX_CONFIG_BYTES} bytes")


def _leaves(tree: Any, prefix: str = "", depth: int = 0) -> Iterator[tuple[str, Any]]:
    """(dotted path, value) of every scalar leaf under mappings (lists are not walked:
    a knob is a key)."""
    if depth > MAX_DEPTH:
        raise ConfigError(f"the config nests deeper than {MAX_DEPTH}")
    if isinstance(tree, Mapping):
        for key, value in tree.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            yield from _leaves(value, path, depth + 1)
    elif isinstance(tree, bool | int | float | str) and prefix:
        yield prefix, tree


def _plain(value: Any) -> Any:
    """tomlkit's and tomllib's values as plain Python scalars."""
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    return value


# --- YAML: composed nodes carry the source span of every scalar ---------------------

def _nesting(source: str) -> None:
    """Refuse deep flow nesting (brackets) and deep block nesting (indentation) before
    PyYAML's recursive parser sees it: it takes seconds on a few thousand levels.
    Brackets inside strings count too; an over-count only refuses."""
    depth = deepest = 0
    for ch in source:
        if ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth = max(depth - 1, 0)
    indent = max((len(line) - len(line.lstrip(" ")) for line in source.splitlines()),
                 default=0)
    if deepest > MAX_DEPTH or indent > 8 * MAX_DEPTH:
        raise ConfigError(f"the config nests deeper than {MAX_DEPTH}")


def _yaml_root(source: str) -> yaml.Node | None:
    _nesting(source)
    try:
        for event in yaml.parse(source, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
                raise ConfigError("YAML anchors and aliases are not read in a config")
        return yaml.compose(source, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"the config nests deeper than {MAX_DEPTH}") from None


def _yaml_scalars(node: yaml.Node | None) -> dict[str, yaml.ScalarNode]:
    """Dotted path -> scalar node, under mappings only, with node and depth caps."""
    found: dict[str, yaml.ScalarNode] = {}
    count = 0

    def walk(n: yaml.Node, prefix: str, depth: int) -> None:
        nonlocal count
        count += 1
        if count > MAX_NODES or depth > MAX_DEPTH:
            raise ConfigError(f"the config is over {MAX_NODES} nodes or {MAX_DEPTH} deep")
        if isinstance(n, yaml.MappingNode):
            for key, value in n.value:
                if isinstance(key, yaml.ScalarNode):
                    walk(value, f"{prefix}.{key.value}" if prefix else key.value, depth + 1)
        elif isinstance(n, yaml.ScalarNode) and prefix:
            found[prefix] = n

    if node is not None:
        walk(node, "", 0)
    return found


def _yaml_value(node: yaml.ScalarNode) -> Scalar:
    value = yaml.SafeLoader("").construct_object(node)
    if not isinstance(value, bool | int | float | str):
        raise ConfigError(f"{node.value!r} is not a number, bool or string")
    return value


def _yaml_text(value: KnobValue) -> str:
    """A scalar as YAML text that PyYAML's safe loader reads back as the same value
    (its floats need a '.' in the mantissa: `1e-05` would be read as a string)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        text = repr(value)
        mantissa, _, exponent = text.partition("e")
        if exponent:
            mantissa = mantissa if "." in mantissa else f"{mantissa}.0"
            sign = exponent if exponent[0] in "+-" else f"+{exponent}"
            return f"{mantissa}e{sign}"
        return text
    if isinstance(value, int):
        return str(value)
    return json.dumps(value, ensure_ascii=False)


# --- the three formats behind one interface ------------------------------------------

def read_config(source: str, kind: str) -> dict[str, Scalar]:
    """Every scalar leaf of the config by dotted path. Raises ConfigError."""
    _size(source)
    if kind == "yaml":
        return {path: _yaml_value(node)
                for path, node in _yaml_scalars(_yaml_root(source)).items()}
    try:
        tree = json.loads(source) if kind == "json" else tomllib.loads(source)
    except (ValueError, RecursionError) as exc:
        raise ConfigError(f"not valid {kind.upper()}: {exc}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"the {kind.upper()} config is not an object of keys")
    return {path: _plain(value) for path, value in _leaves(tree)}


def read_knobs(source: str, kind: str, names: Collection[str]) -> dict[str, Scalar]:
    """The named knobs' values, in the order given (those the config holds)."""
    leaves = read_config(source, kind)
    return {name: leaves[name] for name in names if name in leaves}


def conform(name: str, old: Scalar, value: Any) -> Scalar:
    """`value` as the key will hold it: a number key takes any finite number (an int
    given an integral float stays an int); bools and strings keep their type."""
    def wrong() -> KnobError:
        return KnobError(f"knob {name} is {type(old).__name__} (currently {old!r}); got "
                         f"{value!r} of type {type(value).__name__}")

    if isinstance(old, bool) or isinstance(value, bool):
        if not (isinstance(old, bool) and isinstance(value, bool)):
            raise wrong()
        return value
    if isinstance(old, int | float):
        if not isinstance(value, int | float) or not math.isfinite(value):
            raise wrong()
        if isinstance(old, float):
            return float(value)
        if isinstance(value, float):
            return int(value) if value.is_integer() else value
        return value
    if not isinstance(value, str):
        raise wrong()
    return value


def write_knobs(source: str, kind: str, changes: Mapping[str, Any]) -> str:
    """`source` with the named keys set. Raises KnobError for an unknown key or a value
    of the wrong type, ConfigError if the source does not parse."""
    leaves = read_config(source, kind)
    expected: dict[str, Scalar] = {}
    for name, value in changes.items():
        if name not in leaves:
            raise KnobError(f"unknown knob {name!r}; the config has no scalar key {name}")
        expected[name] = conform(name, leaves[name], value)
    if kind == "yaml":
        nodes = _yaml_scalars(_yaml_root(source))
        spans = sorted(((nodes[n].start_mark.index, nodes[n].end_mark.index,
                         _yaml_text(v)) for n, v in expected.items()), reverse=True)
        for start, end, text in spans:
            source = source[:start] + text + source[end:]
    elif kind == "toml":
        try:
            doc = tomlkit.parse(source)
        except tomlkit.exceptions.TOMLKitError as exc:
            raise ConfigError(f"not valid TOML: {exc}") from None
        for name, value in expected.items():
            *parents, last = name.split(".")
            table: Any = doc
            for part in parents:
                table = table[part]
            table[last] = value
        source = tomlkit.dumps(doc)
    else:
        tree = json.loads(source)
        for name, value in expected.items():
            *parents, last = name.split(".")
            node = tree
            for part in parents:
                node = node[part]
            node[last] = value
        indent = re.search(r"\n([ \t]+)\S", source)
        source = json.dumps(tree, indent=indent.group(1) if indent else None,
                            ensure_ascii=False) + "\n"
    reread = read_config(source, kind)
    for name, value in expected.items():
        if reread.get(name) != value or type(reread.get(name)) is not type(value):
            raise KnobError(f"rewriting knob {name} did not round-trip")
    return source
