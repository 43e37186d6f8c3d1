"""`bilevel --help` and a typo import no command module at all (so no scipy, matplotlib,
Docker SDK or LLM SDK), and a client command's help none of the analysis or LLM stacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("scipy", "matplotlib", "docker", "anthropic", "openai", "torch")
PROBE = """
import json, sys
from controller.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {heavy})))
"""


def _loaded(*argv: str) -> tuple[list[str], str]:
    done = subprocess.run([sys.executable, "-c", PROBE.format(heavy=set(HEAVY)), *argv],
                          capture_output=True, text=True, timeout=60)
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stdout + done.stderr


@pytest.mark.parametrize("argv", [("--help",), ("nope",), ("runs", "--help"),
                                  ("cancel", "--help")])
def test_help_and_typos_import_no_heavy_module(argv: tuple[str, ...]) -> None:
    loaded, output = _loaded(*argv)
    # Client commands still build their controller flags from the sandbox config.
    allowed = {"docker"} if argv[0] in ("runs", "cancel") else set()
    heavy = sorted({m.split(".")[0] for m in loaded} - allowed)
    assert heavy == [], f"{argv} imported {heavy}"
    if argv == ("--help",):
        assert "ablate" in output and "compare search strategies" in output
    if argv == ("nope",):
        assert "invalid choice: 'nope'" in output


def test_a_commands_own_help_shows_its_flags() -> None:
    _, output = _loaded("ablate", "--help")
    assert "--repeats" in output


def test_reading_commands_start_no_controller_and_import_no_llm_sdk(tmp_path: Path) -> None:
    """`runs`, `watch`, `artifact`, `memory list` without --server read the store: no
    in-process controller (controller.api.server), no LLM SDK, no analysis stack."""
    from controller.store.runs import RunStore

    store = RunStore(tmp_path / "bilevel.sqlite3")
    store.create_run("run-a", {"task": {"preset": "surrogate"}, "budgets": {"max_trials": 1}})
    store.close()
    probe = PROBE.replace("m.split('.')[0] in {heavy}",
                          "m.split('.')[0] in {heavy} or m == 'controller.api.server'")
    for argv in (("runs",), ("watch", "run-a"), ("artifact", "run-a", "results.tsv"),
                 ("memory", "list")):
        done = subprocess.run([sys.executable, "-c", probe.format(heavy=set(HEAVY)), *argv,
                               "--state-dir", str(tmp_path)],
                              capture_output=True, text=True, timeout=60)
        loaded = json.loads(done.stdout.strip().splitlines()[-1])
        assert sorted({m.split(".")[0] for m in loaded if m != "controller.api.server"} -
                      {"docker"}) == [], (argv, loaded)
        assert "controller.api.server" not in loaded, argv
        if argv[0] == "runs":  # left running, nobody runs it: said so, not "running"
            assert "run-a" in done.stdout and "waiting" in done.stdout
        if argv[0] == "watch":
            assert "no controller is running it now" in done.stderr
        if argv[0] == "artifact":
            assert "NOT_FOUND" in done.stderr  # no trial finished: the store says so
