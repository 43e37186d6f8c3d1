"""In-container host of one search mechanism, spoken to with JSON lines over stdio.

Started by the runner (sandbox_image/runner.py) as `python3 mechanism_host.py FILE`:
it loads the one mechanism class FILE defines, then answers requests read from stdin,

    {"id": 3, "hook": "filter", "args": [proposal, state]}

with exactly one line each on the ORIGINAL stdout,

    {"id": 3, "ok": true, "result": ..., "seconds": 0.0004}
    {"id": 3, "ok": false, "error": {"type": ..., "message": ..., "frames": [...]}}

Mechanism code never sees that stream: before loading it, the host keeps a private
duplicate of fd 1 for the protocol and points fd 1 (and `sys.stdout`) at stderr, so a
stray print() - or a C extension writing to fd 1 - lands in stderr, not in a reply.
The reserved hook `describe` reports the class name and hooks, or the load error.

Before every hook the global `random` (and numpy's, if loaded) is reseeded from the
state's seed, trial index and the hook name, so a mechanism is deterministic for a seed
even if it draws from the module-level generators. Time limits, memory and output caps
are enforced by the controller and the container, not here.

Standard library only, so it runs in any image with Python 3.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import sys
import time
import traceback
from typing import Any

HOOKS = ("context", "filter", "suggest", "observe", "save_state", "load_state")
MAX_REQUEST_BYTES = 4 << 20
MAX_REPLY_BYTES = 1 << 20
MAX_TEXT = 4000
MAX_FRAMES = 50


def _error(exc: BaseException) -> dict[str, Any]:
    frames = [{"filename": f.filename, "lineno": f.lineno or 0, "name": f.name,
               "line": (f.line or "")[:MAX_TEXT]}
              for f in traceback.extract_tb(exc.__traceback__)]
    return {"type": type(exc).__qualname__, "message": str(exc)[:MAX_TEXT],
            "frames": frames[-MAX_FRAMES:]}


def _problem(kind: str, message: str) -> dict[str, Any]:
    return {"type": kind, "message": message, "frames": []}


def _load(path: str) -> tuple[Any, str, list[str]]:
    """The instance of the one class in `path` that defines hooks."""
    spec = importlib.util.spec_from_file_location("mechanism", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["mechanism"] = module
    spec.loader.exec_module(module)
    classes = [obj for obj in vars(module).values()
               if isinstance(obj, type) and obj.__module__ == "mechanism"
               and any(callable(getattr(obj, h, None)) for h in HOOKS)]
    if len(classes) != 1:
        names = ", ".join(c.__name__ for c in classes) or "none"
        raise TypeError(f"expected exactly one class defining hooks {HOOKS}, found {names}")
    cls = classes[0]
    hooks = [h for h in HOOKS if callable(getattr(cls, h, None))]
    return cls(), cls.__name__, hooks


def _reseed(hook: str, args: list[Any]) -> None:
    state = next((a for a in args if isinstance(a, dict) and "seed" in a), None)
    key = f"{state.get('seed')}:{state.get('trial_index')}:{hook}" if state else hook
    random.seed(key)
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed(int.from_bytes(key.encode()[-4:].rjust(4, b"\0"), "big"))


def _encode(reply: dict[str, Any]) -> bytes:
    try:
        line = json.dumps(reply, allow_nan=False, separators=(",", ":")).encode()
    except (TypeError, ValueError, RecursionError) as exc:
        line = json.dumps({"id": reply.get("id"), "ok": False, "error": _problem(
            "NotJSON", f"the hook returned a value that is not JSON: {exc}")}).encode()
    if len(line) > MAX_REPLY_BYTES:
        line = json.dumps({"id": reply.get("id"), "ok": False, "error": _problem(
            "ReplyTooLarge", f"the reply has {len(line)} bytes, over {MAX_REPLY_BYTES}")
        }).encode()
    return line + b"\n"


def _answer(request: Any, loaded: tuple[Any, str, list[str]] | None,
            load_error: dict[str, Any] | None) -> dict[str, Any]:
    if not isinstance(request, dict) or not isinstance(request.get("args", []), list):
        return {"id": None, "ok": False,
                "error": _problem("BadRequest", "expected {id, hook, args: [...]}")}
    rid, hook, args = request.get("id"), request.get("hook"), request.get("args", [])
    if load_error is not None or loaded is None:
        return {"id": rid, "ok": False, "error": load_error}
    instance, name, hooks = loaded
    if hook == "describe":
        return {"id": rid, "ok": True, "result": {"class": name, "hooks": hooks}}
    if hook not in hooks:
        return {"id": rid, "ok": False,
                "error": _problem("MissingHook", f"{name} does not define {hook!r}")}
    _reseed(str(hook), args)
    started = time.perf_counter()
    try:
        result = getattr(instance, str(hook))(*args)
    except BaseException as exc:  # the mechanism's failure is reported, never fatal here
        return {"id": rid, "ok": False, "error": _error(exc)}
    return {"id": rid, "ok": True, "result": result,
            "seconds": time.perf_counter() - started}


def main() -> int:
    protocol = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    requests = sys.stdin.buffer
    loaded: tuple[Any, str, list[str]] | None = None
    load_error: dict[str, Any] | None = None
    try:
        loaded = _load(sys.argv[1])
    except BaseException as exc:  # a broken module is an answer, not a crash
        load_error = _error(exc)
    while True:
        line = requests.readline(MAX_REQUEST_BYTES + 1)
        if not line:
            return 0  # the controller closed stdin: shut down
        if len(line) > MAX_REQUEST_BYTES:
            reply: dict[str, Any] = {"id": None, "ok": False,
                                     "error": _problem("BadRequest", "request too large")}
        else:
            try:
                request = json.loads(line)
            except ValueError as exc:
                request = None
                reply = {"id": None, "ok": False, "error": _problem("BadRequest", str(exc))}
            if request is not None:
                reply = _answer(request, loaded, load_error)
        protocol.write(_encode(reply))


if __name__ == "__main__":
    sys.exit(main())
