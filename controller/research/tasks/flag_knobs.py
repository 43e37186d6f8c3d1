"""Knobs that are command-line flags: `train.command` names them as `{name}` templates
(`"--lr={lr}"`, or `"--lr", "{lr}"`), so a script with argparse runs as it is.

The values a trial uses are a small JSON document (`flags.json`), the file the search
edits for such a task: one object of knob -> value, read with caps like any
candidate's file. A knob's baseline is the manifest's `default`, or else the literal
`default=` of the script's own `add_argument` for that flag, read from its syntax tree
without running it.
"""

from __future__ import annotations

import ast
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from controller.research.tasks.config_knobs import conform
from trainer import pysource
from trainer.knobs import KnobError

FLAGS_FILE = "flags.json"
MAX_FLAGS_BYTES = 16 << 10
PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]{0,63})\}")
Scalar = int | float | bool | str


@dataclass(frozen=True)
class FlagUse:
    """One `{name}` of the command: which argument and the flag it fills."""

    name: str
    index: int  # the argument of train.command that holds it
    flag: str  # "--lr", or "" for a positional argument


def uses(command: Sequence[str]) -> list[FlagUse]:
    """Every `{name}` of a command template, with the flag it belongs to."""
    found = []
    for i, arg in enumerate(command):
        for match in PLACEHOLDER.finditer(arg.replace("{{", "").replace("}}", "")):
            if arg.startswith("-") and "=" in arg:
                flag = arg.split("=", 1)[0]
            elif i > 0 and command[i - 1].startswith("-") and arg.startswith("{"):
                flag = command[i - 1]
            else:
                flag = ""
            found.append(FlagUse(match.group(1), i, flag))
    return found


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return repr(value)
    return str(value)


def render(command: Sequence[str], values: Mapping[str, Any]) -> tuple[str, ...]:
    """The command with each `{name}` replaced by its value (`{{`/`}}` are braces)."""
    def one(arg: str) -> str:
        parts = re.split(r"(\{\{|\}\})", arg)
        out = []
        for part in parts:
            if part in ("{{", "}}"):
                out.append(part[0])
            else:
                out.append(PLACEHOLDER.sub(lambda m: _text(values[m.group(1)]), part))
        return "".join(out)

    return tuple(one(arg) for arg in command)


def argparse_defaults(source: str) -> dict[str, Scalar]:
    """Flag -> the literal `default=` of each `add_argument("--flag", ...)` in a script
    (every option string of the call maps to it). A computed default is skipped."""
    try:
        tree = pysource.parse(source)
    except SyntaxError:
        return {}
    found: dict[str, Scalar] = {}
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "add_argument"):
            continue
        flags = [a.value for a in node.args
                 if isinstance(a, ast.Constant) and isinstance(a.value, str)
                 and a.value.startswith("-")]
        default = next((k.value for k in node.keywords if k.arg == "default"), None)
        if not flags or default is None:
            continue
        try:
            value = ast.literal_eval(default)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            continue
        if isinstance(value, bool | int | float | str):
            for flag in flags:
                found[flag] = value
    return found


def read_flags(source: str, names: Sequence[str]) -> dict[str, Scalar]:
    """The flags document's values of `names` (in that order). Raises ValueError."""
    if len(source.encode()) > MAX_FLAGS_BYTES:
        raise ValueError(f"{FLAGS_FILE} is over {MAX_FLAGS_BYTES} bytes")
    try:
        tree = json.loads(source)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"{FLAGS_FILE} is not valid JSON: {exc}") from None
    if not isinstance(tree, dict):
        raise ValueError(f"{FLAGS_FILE} must be one JSON object of flag values")
    out: dict[str, Scalar] = {}
    for name in names:
        value = tree.get(name)
        if isinstance(value, bool | int | float | str) and not (
                isinstance(value, float) and not math.isfinite(value)):
            out[name] = value
    return out


def write_flags(source: str, names: Sequence[str], changes: Mapping[str, Any]) -> str:
    """The flags document with `changes` set; KnobError for an unknown flag or a value
    of another type than the flag's."""
    current = read_flags(source, names)
    for name, value in changes.items():
        if name not in current:
            raise KnobError(f"unknown knob {name!r}; the command's flags: {', '.join(names)}")
        current[name] = conform(name, current[name], value)  # a config key's typing rule
    return flags_document(current)


def flags_document(values: Mapping[str, Any]) -> str:
    """The flags document of `values`, one knob per line."""
    return json.dumps(dict(values), indent=2, ensure_ascii=False) + "\n"
