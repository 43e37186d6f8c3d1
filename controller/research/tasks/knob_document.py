"""The file a task's search edits, and where its knobs live in it: a Python file's
top-level literals, a YAML/JSON/TOML config's keys, or the command's `{flag}` values
(a `flags.json` the controller writes). One interface, so the loop, the proposers and
the artifacts need not know which.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from controller.research.tasks import config_knobs, flag_knobs
from trainer import knobs as python_knobs


@dataclass(frozen=True)
class KnobDocument:
    """How to read and rewrite the knobs of one task's editable text."""

    kind: str  # "python" | "yaml" | "json" | "toml" | "flags"
    path: str  # the file's path in the task directory: what users and LLMs read
    names: tuple[str, ...] = ()  # the knobs [knobs] names (a Python file adds UPPER_CASE)
    command: tuple[str, ...] = ()  # flags only: train.command, the template

    @property
    def python(self) -> bool:
        return self.kind == "python"

    @property
    def language(self) -> str:
        """The fence language of the file in a prompt."""
        return {"flags": "json", "python": "python"}.get(self.kind, self.kind)

    def read(self, source: str) -> dict[str, Any]:
        """The knobs' values by name. Raises SyntaxError (Python) or ValueError."""
        if self.kind == "python":
            return python_knobs.read_knobs(source, self.names)
        if self.kind == "flags":
            return dict(flag_knobs.read_flags(source, self.names))
        return dict(config_knobs.read_knobs(source, self.kind, self.names))

    def write(self, source: str, changes: Mapping[str, Any]) -> str:
        """`source` with the knobs set; ValueError (KnobError, ConfigError) if not."""
        if self.kind == "python":
            return python_knobs.write_knobs(source, changes, self.names)
        if self.kind == "flags":
            return flag_knobs.write_flags(source, self.names, changes)
        unknown = [name for name in changes if name not in self.names]
        if unknown:
            raise python_knobs.KnobError(f"unknown knob {unknown[0]!r}; the knobs of "
                                         f"{self.path}: {', '.join(self.names)}")
        return config_knobs.write_knobs(source, self.kind, changes)

    def check(self, source: str) -> None:
        """Raises ValueError naming the file if `source` is not a valid document of its
        kind (Python: does not compile)."""
        if self.kind == "python":
            try:
                compile(source, self.path, "exec", dont_inherit=True)
            except SyntaxError as exc:
                raise ValueError(f"{self.path} does not compile: {exc.msg} at line "
                                 f"{exc.lineno}: {(exc.text or '').strip()}") from None
            return
        self.read(source)
        if self.kind != "flags":
            config_knobs.read_config(source, self.kind)

    def origin(self, name: str) -> str:
        """Where a knob comes from, in words, e.g. "key optimizer.lr of conf.yaml"."""
        if self.kind == "python":
            return f"top-level constant {name} of {self.path}"
        if self.kind == "flags":
            flags = sorted({u.flag or "a positional argument" for u in
                            flag_knobs.uses(self.command) if u.name == name})
            return f"flag {', '.join(flags)} of train.command (value in {self.path})"
        return f"key {name} of {self.path} ({self.kind.upper()})"

    def looked_for(self) -> str:
        """What a knob of this document is, for the error of a task with none."""
        named = f"the names in [knobs] ({', '.join(self.names)})" if self.names else \
            "names in [knobs]"
        if self.kind == "python":
            return (f"top-level UPPER_CASE literal constants of {self.path}, and top-level "
                    f"literal assignments of {named}")
        if self.kind == "flags":
            return f"{{name}} templates in train.command that are {named}"
        return f"scalar keys (dotted paths) of {self.path} that are {named}"

    def render(self, values: Mapping[str, Any]) -> tuple[str, ...]:
        """The train command of a flags task with the trial's values filled in."""
        return flag_knobs.render(self.command, values)


def editable_path(task: object) -> str:
    """The path of the file a task's search edits, as users and LLMs should read it:
    a task directory's own (`config/train_char.py`, `flags.json`); train.py otherwise."""
    document = getattr(task, "document", None)
    return document.path if isinstance(document, KnobDocument) else "train.py"


def document_of(editable: str, names: Sequence[str], command: Sequence[str]) -> KnobDocument:
    """The document of a task: flags if train.command holds `{name}` templates, else
    by the editable file's extension."""
    flags = tuple(dict.fromkeys(use.name for use in flag_knobs.uses(command)))
    if flags:  # every templated flag needs a value, named in [knobs] or not
        return KnobDocument("flags", flag_knobs.FLAGS_FILE, flags, tuple(command))
    kind = config_knobs.format_of(editable) or "python"
    return KnobDocument(kind, editable, tuple(names))
