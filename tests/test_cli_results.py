"""results.tsv as a researcher keeps it: the `commit` column is the content hash git gives
the trial's train.py, and descriptions carry no proposer tag."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from controller.research.level1.results import HEADER, blob_hash, results_tsv
from controller.store.records import TrialRecord, TrialStatus


def git_hash_object(path: Path) -> str:
    done = subprocess.run(["git", "hash-object", str(path)], capture_output=True, text=True,
                          check=True, timeout=30)
    return done.stdout.strip()


@pytest.mark.parametrize("content", [b"", b"DEPTH = 4\n", "é ü \u2603\n".encode(),
                                     bytes(range(256)) * 3, b"no newline at end"])
def test_blob_hash_is_what_git_hash_object_prints(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "train.py"
    path.write_bytes(content)
    assert blob_hash(content) == git_hash_object(path)[:7]


def test_rows_carry_the_train_py_hash_and_no_proposer_tag(tmp_path: Path) -> None:
    sources = {0: b"LR = 0.04\n", 1: b"LR = 0.02\n", 2: b"LR = 0.02\n"}
    trials = [
        TrialRecord("run-x", 0, True, 1, "baseline", {}, TrialStatus.KEEP, 1.5),
        TrialRecord("run-x", 1, True, 1, "LR 0.04 -> 0.02 [random baseline]", {},
                    TrialStatus.KEEP, 1.4),
        TrialRecord("run-x", 2, True, 1, "LR 0.04 -> 0.02 [random_search]", {},
                    TrialStatus.DISCARD, 1.45),
        TrialRecord("run-x", 3, True, 1, "a crash  [tpe]", {}, TrialStatus.CRASH),
        TrialRecord("run-x", 4, False, 1, "still running [local]", {}),
        TrialRecord("run-x", 5, True, 1, "keeps [brackets] of its own", {},
                    TrialStatus.DISCARD, 1.6),
    ]
    sources[5] = b"x = [1]\n"
    rows = results_tsv(trials, sources.get).splitlines(keepends=True)
    assert rows[0] == HEADER
    cells = [row.rstrip("\n").split("\t") for row in rows[1:]]
    assert [c[4] for c in cells] == ["baseline", "LR 0.04 -> 0.02", "LR 0.04 -> 0.02",
                                     "a crash", "keeps [brackets] of its own"]
    for index, (commit, *_rest) in zip((0, 1, 2, 3, 5), cells, strict=True):
        if index in sources:
            path = tmp_path / f"{index}.py"
            path.write_bytes(sources[index])
            assert commit == git_hash_object(path)[:7]
        else:
            assert commit == "-"  # no train.py on disk: no hash to claim
    assert cells[1][0] == cells[2][0]  # the same file gets the same commit
