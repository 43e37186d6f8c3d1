"""Search/replace edits of train.py, the format code-mode answers use:

    <<<<<<< SEARCH
    exact lines of the current train.py
    =======
    their replacement
    >>>>>>> REPLACE

Each SEARCH text must occur exactly once in the file as it stands after the edits
before it; otherwise the edit is rejected with a reason the LLM can act on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from controller.research.level1.space import ProposalError

BLOCK = re.compile(r"^<{5,9} SEARCH[ \t]*\n(.*?)^={5,9}[ \t]*\n(.*?)^>{5,9} REPLACE[ \t]*$",
                   re.MULTILINE | re.DOTALL)


@dataclass(frozen=True)
class Edit:
    search: str
    replace: str


def parse_edits(text: str) -> list[Edit]:
    # The newline before ======= and >>>>>>> belongs to the block syntax, not the text.
    edits = [Edit(m.group(1).removesuffix("\n"), m.group(2).removesuffix("\n"))
             for m in BLOCK.finditer(text)]
    if not edits:
        raise ProposalError("edits", "the answer holds no <<<<<<< SEARCH / ======= / >>>>>>> "
                            "REPLACE block")
    return edits


def apply_edits(source: str, edits: list[Edit]) -> str:
    for number, edit in enumerate(edits, 1):
        if not edit.search.strip():
            raise ProposalError("edits", f"edit {number} has an empty SEARCH text")
        count = source.count(edit.search)
        if count == 0:
            raise ProposalError("edits", f"edit {number}: the SEARCH text does not occur in "
                                "train.py; copy the lines exactly, whitespace included")
        if count > 1:
            raise ProposalError("edits", f"edit {number}: the SEARCH text occurs {count} times;"
                                " include more surrounding lines so it matches once")
        source = source.replace(edit.search, edit.replace, 1)
    return source
