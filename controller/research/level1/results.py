"""results.tsv in Karpathy's format: commit, val_bpb, memory_gb, status, description.

Status is keep, discard or crash, except that a crash the trusted side declared names
its cause: `over_budget` (training broke its time bound) or `seed_ignored` (a re-run on
another seed was bit-identical). Both are crashes everywhere else: never kept."""

from __future__ import annotations

from collections.abc import Iterable

from controller.store.records import TrialRecord, TrialStatus

RULE_BREAKS = ("over_budget", "seed_ignored")  # job statuses set by the trusted side

HEADER = "commit\tval_bpb\tmemory_gb\tstatus\tdescription\n"


def results_tsv(trials: Iterable[TrialRecord]) -> str:
    """One row per finished trial, in trial order; `commit` is the trial id. A crash has
    val_bpb and memory_gb 0, as in autoresearch."""
    rows = [HEADER]
    for t in trials:
        if not t.finished or t.status is None:
            continue
        text = " ".join(t.description.split())
        status = t.job_status if t.status is TrialStatus.CRASH and t.job_status in \
            RULE_BREAKS else t.status.value
        rows.append(f"{t.index}\t{t.val_bpb or 0.0:.6f}\t{t.memory_gb:.1f}\t"
                    f"{status}\t{text}\n")
    return "".join(rows)
