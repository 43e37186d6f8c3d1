"""Loaded by every Python process in a sandbox job: records an uncaught exception.

Writes the exception's type, message and frames as JSON to
$BILEVEL_EXCEPTION_DIR/<pid>.json so the runner can return a structured traceback,
then prints the usual traceback to stderr as Python would.
"""

import json
import os
import sys
import traceback

_MAX_FRAMES = 200
_MAX_TEXT = 4000


def _record(exc_type, exc, tb):  # type: ignore[no-untyped-def]
    try:
        frames = [
            {"filename": f.filename, "lineno": f.lineno or 0, "name": f.name,
             "line": (f.line or "")[:_MAX_TEXT]}
            for f in traceback.extract_tb(tb)
        ][-_MAX_FRAMES:]
        payload = {"type": exc_type.__qualname__, "message": str(exc)[:_MAX_TEXT],
                   "frames": frames}
        folder = os.environ.get("BILEVEL_EXCEPTION_DIR")
        if folder:
            with open(os.path.join(folder, f"{os.getpid()}.json"), "w") as handle:
                json.dump(payload, handle)
    except Exception:  # never mask the job's own exception
        pass
    sys.__excepthook__(exc_type, exc, tb)


sys.excepthook = _record
