"""Parse JSON that a job or a mechanism wrote, within caps on size, depth and width.

Everything a sandbox writes is hostile. `json.loads` alone recurses once per nesting
level (100k-deep input raises RecursionError, not ValueError), accepts NaN and lone
surrogates (which SQLite and protobuf then refuse), and has no cap on size. `loads`
checks the byte cap and the nesting depth BEFORE `json.loads` runs, then walks the value
once for string, list and number caps, so the only error it raises is `JSONLimitError`
(a ValueError) and what it returns is plain, finite, UTF-8-clean JSON data.

With `truncate=True` (display data such as an exception record) long strings and lists
are cut instead of refused; the cut strings say so. Otherwise a cap is an error naming
the path, as a reply that changed silently would be worse than one that failed.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1
_STRINGS = re.compile(rb'"(?:[^"\\]++|\\.)*+(?:"|\Z)', re.DOTALL)  # linear: never fails
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_MAX_NUMBER_CHARS = 64  # 1e308 needs 5; a 4000-digit int is only an attack on int()
_MAX_INT_BITS = 212  # about 64 decimal digits


class JSONLimitError(ValueError):
    """The bytes are not JSON, or break one of the caps; the message says which."""


@dataclass(frozen=True)
class Caps:
    """Bounds for one kind of untrusted JSON. `nonfinite_null` turns NaN and +-Infinity
    into null (a metric that diverged) instead of refusing them."""

    max_bytes: int = 1 << 20
    max_depth: int = 32
    max_str: int = 64 << 10  # characters, keys included
    max_items: int = 10_000  # per list or object
    truncate: bool = False
    nonfinite_null: bool = False


def loads(data: bytes | str, caps: Caps, what: str = "JSON") -> Any:
    """The value in `data`, bounded by `caps`; raises only JSONLimitError."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    if len(raw) > caps.max_bytes:
        raise JSONLimitError(f"{what} has {len(raw)} bytes, over the cap of {caps.max_bytes}")
    check_depth(raw, caps.max_depth, what)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JSONLimitError(f"{what} is not UTF-8: {exc}") from None
    try:
        value = json.loads(text, parse_int=_parse_int, parse_float=_parse_float,
                           parse_constant=_parse_constant)
    except JSONLimitError as exc:
        raise JSONLimitError(f"{what}: {exc}") from None
    except (ValueError, RecursionError) as exc:  # RecursionError: only if caps.max_depth is huge
        raise JSONLimitError(f"{what} is not JSON: {exc}") from None
    return bound(value, caps, what)


def check_depth(raw: bytes, max_depth: int, what: str = "JSON") -> None:
    """Refuse `raw` if its brackets nest deeper than `max_depth` (or do not balance).

    Runs in C-speed passes: drop strings, keep only brackets, then peel the innermost
    pairs once per level, at most `max_depth` times."""
    brackets = _STRINGS.sub(b"", raw).translate(None, _NOT_BRACKETS)
    for _ in range(max_depth):
        if not brackets:
            return
        peeled = brackets.replace(b"[]", b"").replace(b"{}", b"")
        if len(peeled) == len(brackets):
            break
        brackets = peeled
    if brackets:
        raise JSONLimitError(f"{what} nests deeper than {max_depth} levels, or its brackets "
                             "do not balance")


def bound(value: Any, caps: Caps, what: str = "JSON") -> Any:
    """`value` (already parsed) checked against `caps`: a fresh copy of plain JSON data."""
    try:
        return _bound(value, caps, 0)
    except _Cap as exc:
        where = "".join(reversed(exc.path))
        raise JSONLimitError(f"{what}{where}: {exc.message}") from None


class _Cap(Exception):
    """A cap broken somewhere inside; the path is built on the way out, only on error."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        self.path: list[str] = []


def _bound(value: Any, caps: Caps, depth: int) -> Any:
    kind = type(value)
    if kind is str:
        return _text(value, caps)
    if kind is bool or value is None:
        return value
    if kind is int:
        if value.bit_length() > _MAX_INT_BITS:
            raise _Cap(f"integer over {_MAX_INT_BITS} bits")
        return value
    if kind is float:
        if math.isfinite(value):
            return value
        if caps.nonfinite_null:
            return None
        raise _Cap(f"{value} is not a finite number")
    if depth >= caps.max_depth:
        raise _Cap(f"nests deeper than {caps.max_depth} levels")
    if kind is list or kind is tuple:
        items = _width(list(value), caps)
        out_list = []
        for i, item in enumerate(items):
            try:
                out_list.append(_bound(item, caps, depth + 1))
            except _Cap as exc:
                exc.path.append(f"[{i}]")
                raise
        return out_list
    if kind is dict:
        out: dict[str, Any] = {}
        for key, item in _width(list(value.items()), caps):
            if type(key) is not str:
                raise _Cap(f"key {type(key).__name__} is not a string")
            try:
                name = _text(key, caps)
                out[name] = _bound(item, caps, depth + 1)
            except _Cap as exc:
                exc.path.append(f".{key[:40]}")
                raise
        return out
    raise _Cap(f"{kind.__name__} is not JSON")


def _width(items: list[Any], caps: Caps) -> list[Any]:
    if len(items) <= caps.max_items:
        return items
    if caps.truncate:
        return items[:caps.max_items]
    raise _Cap(f"{len(items)} items, over the cap of {caps.max_items}")


def _text(value: str, caps: Caps) -> str:
    if len(value) > caps.max_str:
        if not caps.truncate:
            raise _Cap(f"string of {len(value)} characters, over the cap of {caps.max_str}")
        value = value[:caps.max_str] + f" [truncated {len(value) - caps.max_str} chars]"
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate from a "\ud800" escape
            if not caps.truncate:
                raise _Cap("string is not valid Unicode (lone surrogate)") from None
            value = value.encode("utf-8", "replace").decode("utf-8")
    return value


def _parse_int(text: str) -> int:
    if len(text) > _MAX_NUMBER_CHARS:
        raise JSONLimitError(f"number {text[:20]}... has more than {_MAX_NUMBER_CHARS} digits")
    return int(text)


def _parse_float(text: str) -> float:
    if len(text) > _MAX_NUMBER_CHARS:
        raise JSONLimitError(f"number {text[:20]}... has more than {_MAX_NUMBER_CHARS} chars")
    return float(text)


def _parse_constant(name: str) -> float:
    return float(name)  # NaN, Infinity, -Infinity: `bound` refuses or nulls them


def text(value: Any, limit: int) -> str:
    """Any untrusted value as display text of at most about `limit` characters."""
    if value is None:
        return ""
    raw = value if isinstance(value, str) else _repr(value, limit)
    return _text(raw, Caps(max_str=limit, truncate=True))


def _repr(value: Any, limit: int) -> str:
    try:
        return json.dumps(value, ensure_ascii=False)[:limit + 1]
    except (TypeError, ValueError, RecursionError):
        return type(value).__name__


def int32(value: Any, default: int = 0) -> int:
    """An untrusted integer for an int32 field: ints outside the range (and non-ints,
    bools included) become `default`."""
    if isinstance(value, bool) or not isinstance(value, int):
        return default
    return value if INT32_MIN <= value <= INT32_MAX else default
