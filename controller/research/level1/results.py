"""results.tsv in Karpathy's format: commit, val_bpb, memory_gb, status, description.

Status is keep, discard or crash, except that a crash the trusted side declared names
its cause: `over_budget` (training broke its time bound) or `seed_ignored` (a re-run on
another seed was bit-identical). Both are crashes everywhere else: never kept.

`commit` is the short content hash of the trial's train.py as `git hash-object` computes
it, so a row matches the file in a git history of train.py; descriptions drop the
offline proposers' "[local]"-style tags (they name the proposer, not the change).
A task with another metric names it in the second column and gives its value (not the
loss the loop minimises), and has no memory_gb column (only the GPT trainer measures
it); the GPT task keeps Karpathy's columns exactly."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable

from controller.research.settings import OFFLINE_PROPOSERS
from controller.research.task import GPT, Objective
from controller.store.records import TrialRecord, TrialStatus

RULE_BREAKS = ("over_budget", "seed_ignored")  # job statuses set by the trusted side

HEADER = "commit\tval_bpb\tmemory_gb\tstatus\tdescription\n"
SHORT_HASH = 7  # git's default abbreviation
_TAG = re.compile(r"\s*\[(?:" + "|".join(map(re.escape, (*OFFLINE_PROPOSERS,
                                                          "random baseline"))) + r")\]$")
# A trial's train.py, or None when it has none on disk (a proposal that never ran).
Source = Callable[[int], bytes | None]


def blob_hash(content: bytes) -> str:
    """`git hash-object`: sha1 of "blob <length>\\0" + content, abbreviated."""
    digest = hashlib.sha1(b"blob %d\0" % len(content) + content, usedforsecurity=False)
    return digest.hexdigest()[:SHORT_HASH]


def results_tsv(trials: Iterable[TrialRecord], source: Source,
                objective: Objective = GPT) -> str:
    """One row per finished trial, in trial order. A crash has val_bpb and memory_gb 0,
    as in autoresearch; a trial without a train.py has commit "-"."""
    memory = objective == GPT
    header = HEADER if memory else HEADER.replace("val_bpb", objective.metric).replace(
        "memory_gb\t", "")
    rows = [header]
    for t in trials:
        if not t.finished or t.status is None:
            continue
        text = _TAG.sub("", " ".join(t.description.split()))
        content = source(t.index)
        commit = "-" if content is None else blob_hash(content)
        status = t.job_status if t.status is TrialStatus.CRASH and t.job_status in \
            RULE_BREAKS else t.status.value
        value = 0.0 if t.val_bpb is None else objective.shown(t.val_bpb)
        gb = f"{t.memory_gb:.1f}\t" if memory else ""
        rows.append(f"{commit}\t{value:.6f}\t{gb}{status}\t{text}\n")
    return "".join(rows)
