"""results.tsv in Karpathy's format: commit, val_bpb, memory_gb, status, description."""

from __future__ import annotations

from collections.abc import Iterable

from controller.store.records import TrialRecord

HEADER = "commit\tval_bpb\tmemory_gb\tstatus\tdescription\n"


def results_tsv(trials: Iterable[TrialRecord]) -> str:
    """One row per finished trial, in trial order; `commit` is the trial id. A crash has
    val_bpb and memory_gb 0, as in autoresearch."""
    rows = [HEADER]
    for t in trials:
        if not t.finished or t.status is None:
            continue
        text = " ".join(t.description.split())
        rows.append(f"{t.index}\t{t.val_bpb or 0.0:.6f}\t{t.memory_gb:.1f}\t"
                    f"{t.status.value}\t{text}\n")
    return "".join(rows)
