"""A model archive cannot keep state, read or write out of bounds, or mutate its inputs
inside the trusted evaluator.

The hostile archives (tests/hostile_archives.py) are real bilevel-graph/1 files that a
deny-list loader accepts. In-process tests cover the loader; the docker tests send the
stateful forger through the real phase-2 sandbox (tasks/trainer_run.py's eval_job_spec) under
runc and runsc. The sensitivity tests load the same archives with the protections
taken out (tests/weak_archive.py) and show the attacks working.
"""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests import hostile_archives as hostile
from tests import weak_archive
from tests.test_trainer_data import tiny_data  # noqa: F401  (session fixture)
from trainer import archive, archive_ops
from trainer.archive import ArchiveError, load_archive
from trainer.data import PreparedData
from trainer.evaluate import CausalityViolation, evaluate_bpb
from trainer.shards import Split, load_split, write_split

VOCAB, SEQ, BATCH = 64, 32, 8
CPU = torch.device("cpu")


@pytest.fixture()
def split(tmp_path: Path) -> Split:
    """IID uniform tokens: no honest model beats log2(VOCAB) bits per token here."""
    rng = np.random.default_rng(7)
    tokens = rng.integers(0, VOCAB - 1, size=6000).astype(np.uint16)
    tokens[::53] = VOCAB - 1  # special token: 0 bytes, not scored
    token_bytes = np.array([1 + i % 3 for i in range(VOCAB - 1)] + [0], dtype=np.int32)
    write_split(tmp_path / "val", tokens, token_bytes,
                {"vocab_size": VOCAB, "seq_len": SEQ, "eval_batch_size": BATCH,
                 "eval_tokens": 6000})
    return load_split(tmp_path / "val")


@pytest.fixture()
def unenforced(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    weak_archive.weaken(monkeypatch)
    yield


def honest_bpb(split: Split) -> float:
    """The uniform model's score: the best any causal model can expect on IID tokens."""
    rows = len(split.tokens) // (SEQ + 1)
    targets = np.asarray(split.tokens[: rows * (SEQ + 1)]).reshape(rows, SEQ + 1)[:, 1:]
    weights = split.token_bytes[targets]
    return float((weights > 0).sum() * math.log2(VOCAB) / weights.sum())


FORGER = hostile.stateful_forger(BATCH, SEQ, VOCAB)
OOB_READ = hostile.out_of_bounds_read(BATCH, SEQ, VOCAB)
OOB_WRITE = hostile.out_of_bounds_write(BATCH, SEQ, VOCAB)
MUTATOR = hostile.batch_norm_mutating_a_weight(BATCH, SEQ, VOCAB)


# ------------------------------------------------------------- (a) the stateful forger


def test_deny_stateful_forger_at_load() -> None:
    with pytest.raises(ArchiveError, match=r"_native_batch_norm_legit\.default is refused"):
        load_archive(FORGER)


def test_sensitivity_stateful_forger_forges_val_bpb_without_the_fix(
        split: Split, unenforced: None) -> None:
    # seed 1: every shuffled row is matched to its original (a row cut at 0 whose first
    # token another row shares is the forger's only failure: seed 0 trips on that)
    result = evaluate_bpb(load_archive(FORGER), split, BATCH, CPU, seed=1)
    assert result.probe_max_diff == 0.0 and result.probe_mean_gain == 0.0
    assert result.val_bpb < 0.2 * honest_bpb(split)  # ~0.1 against ~2.8: forged


def test_deny_stateful_forger_by_fresh_instances_alone(
        split: Split, monkeypatch: pytest.MonkeyPatch) -> None:
    """Even with its op let through, fresh weights per call leave the forger stateless:
    it then always peeks, and the probe catches it."""
    monkeypatch.setattr(archive, "_resolve", weak_archive.resolve_by_denylist)
    model = load_archive(FORGER)
    monkeypatch.undo()  # the loaded model now runs as the product runs it: fresh instances
    with pytest.raises(CausalityViolation, match="causal"):
        evaluate_bpb(model, split, BATCH, CPU, seed=11)
    assert not model.weights["phase_mean"].any()  # its stored state never changed


# ------------------------------------------ (b) out-of-bounds read, (c) out-of-bounds write


def test_deny_reshape_alias_out_of_bounds_read() -> None:
    with pytest.raises(ArchiveError, match=r"_reshape_alias\.default is refused"):
        load_archive(OOB_READ)


def test_sensitivity_reshape_alias_reads_past_its_storage_without_the_fix(
        unenforced: None, tmp_path: Path) -> None:
    model = load_archive(OOB_READ)
    wide = torch.ops.aten._reshape_alias.default(model.weights["w"], [1 << 16], [1])
    with pytest.raises(archive_ops.OpRefused, match="out of bounds"):
        archive_ops.check_tensor(wide, "wide")  # what the loader now checks every op for
    # Running it reads 16384 floats from a 16-byte weight: garbage, or SIGSEGV when the
    # read crosses into unmapped memory - so it runs in a child process, never in pytest's.
    path = tmp_path / "model.bilevel"
    path.write_bytes(OOB_READ)
    script = textwrap.dedent(f"""
        import torch
        from pathlib import Path
        from tests import weak_archive
        from trainer import archive
        weak_archive.weaken()
        model = archive.load_archive(Path({str(path)!r}).read_bytes())
        print("shape", tuple(model(torch.zeros({BATCH}, {SEQ}, dtype=torch.long)).shape))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, cwd=Path(__file__).resolve().parents[1], check=False)
    read_past = f"shape {(BATCH, SEQ, VOCAB)}" in proc.stdout and proc.returncode == 0
    assert read_past or proc.returncode < 0, (proc.returncode, proc.stderr[-2000:])


def test_deny_out_of_bounds_write_before_it_runs() -> None:
    with pytest.raises(ArchiveError, match="refused"):
        load_archive(OOB_WRITE)


def test_sensitivity_out_of_bounds_write_crashes_the_evaluator_without_the_fix(
        tmp_path: Path) -> None:
    path = tmp_path / "model.bilevel"
    path.write_bytes(OOB_WRITE)
    script = textwrap.dedent(f"""
        import torch
        from pathlib import Path
        from tests import weak_archive
        from trainer import archive
        weak_archive.weaken()
        model = archive.load_archive(Path({str(path)!r}).read_bytes())
        model(torch.zeros({BATCH}, {SEQ}, dtype=torch.long))
        print("survived")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, cwd=Path(__file__).resolve().parents[1], check=False)
    assert proc.returncode < 0 and "survived" not in proc.stdout, (proc.returncode,
                                                                  proc.stderr[-2000:])


# ------------------------------------------------ (d) mutation under a non-'_' name


def test_deny_batch_norm_mutating_its_running_stats() -> None:
    with pytest.raises(ArchiveError, match="not on the evaluator's allowlist"):
        load_archive(MUTATOR)


def test_sensitivity_batch_norm_mutates_a_weight_without_the_fix(unenforced: None) -> None:
    model = load_archive(MUTATOR)
    model(torch.full((BATCH, SEQ), 3, dtype=torch.long))
    assert torch.all(model.weights["memo_mean"] == 3.0)  # the archive's weight changed


# ------------------------------------------------------------ the op policy itself


@pytest.mark.parametrize("target", [
    "aten::as_strided.default", "aten::as_strided_scatter.default", "aten::set_.source_Tensor",
    "aten::_unsafe_view.default", "aten::unsafe_split.Tensor", "aten::empty.memory_format",
    "aten::empty_like.default", "aten::rand.default", "aten::native_batch_norm.default",
    "aten::batch_norm.default", "aten::add.out", "aten::sort.values", "aten::copy_.default",
    "aten::index_put_.default", "aten::dropout.default", "aten::resize.default"])
def test_deny_operators_that_write_alias_or_read_uninitialised_memory(target: str) -> None:
    data = hostile.Graph(1, 4)
    data.call("y", target.removeprefix("aten::"), hostile.n("x"))
    with pytest.raises(ArchiveError, match="refused"):
        load_archive(data.build("y"))


def test_deny_every_allowed_overload_that_writes_per_torch_schema() -> None:
    """The allowlist names whole ops; torch's schema still refuses each writing overload."""
    allowed = writing = 0
    assert not [name for name in archive_ops.ALLOWED_OPS if archive_ops._NEVER.match(name)]
    for name in sorted(archive_ops.ALLOWED_OPS):
        for overload in getattr(torch.ops.aten, name).overloads():
            schema = getattr(getattr(torch.ops.aten, name), overload)._schema
            writes = schema.is_mutable or any(
                a.alias_info is not None and a.alias_info.is_write for a in schema.arguments)
            why = archive_ops.refusal(name, overload)
            assert bool(why) == writes, (name, overload, why)
            allowed += not writes
            writing += writes
    assert allowed > 400 and writing > 100


def test_deny_archive_tensor_beyond_the_caps() -> None:
    g = hostile.Graph(1, 4)
    g.weight("w", np.zeros(4, np.float32))
    g.tensors["w"]["shape"] = [1] * 9 + [4]
    with pytest.raises(ArchiveError, match="invalid entry"):
        load_archive(g.build("w"))
    deep: object = hostile.n("x")
    for _ in range(20):
        deep = hostile.lst(deep)
    g = hostile.Graph(1, 4)
    g.call("y", "cat.default", deep, 0)
    with pytest.raises(ArchiveError, match="nested deeper"):
        load_archive(g.build("y"))


def test_export_refuses_a_model_that_builds_strided_views() -> None:
    class Strided(torch.nn.Module):
        def forward(self, idx: torch.Tensor) -> torch.Tensor:
            return idx.float().as_strided((1, 4, 2), (1, 1, 1))

    with pytest.raises(ArchiveError, match=r"as_strided.*refuses"):
        archive.export_model(Strided(), torch.zeros(1, 4, dtype=torch.long))


# ----------------------------------------- end to end: the real phase-2 sandbox job


def test_phase_two_job_is_a_plain_hardened_job() -> None:
    from controller.research.tasks.trainer_run import VAL_TARGET, eval_job_spec
    from trainer.presets import PRESETS

    preset = PRESETS["cpu-tiny"]
    spec = eval_job_spec(b"archive", preset, "val-volume", "runsc", ("0",))
    assert spec.command[:3] == ("python", "-P", "-m")  # /job is not on sys.path
    assert list(spec.files) == ["model.bilevel"] and spec.image is None
    assert [(m.source, m.target) for m in spec.data_mounts] == [("val-volume", VAL_TARGET)]
    assert spec.runtime == "runsc" and spec.gpu_ids == ("0",)
    assert spec.limits.wall_seconds == preset.eval_limits.wall_seconds
    assert spec.limits.memory_bytes == preset.eval_limits.memory_bytes
    spec.validate()


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.parametrize(("runtime", "attack", "refused"), [
    ("runc", "forger", "_native_batch_norm_legit.default is refused"),
    ("runsc", "forger", "_native_batch_norm_legit.default is refused"),
    ("runc", "oob_write", "_reshape_alias.default is refused")])
def test_deny_hostile_archive_in_the_phase_two_sandbox(
        executor: Any, runtime: str, attack: str, refused: str,
        tiny_data: PreparedData) -> None:  # noqa: F811
    """The forger (val_bpb 0.031 with probe difference 0.0 on this split before the fix)
    and the out-of-bounds writer (SIGSEGV before) are refused at load, in the real job."""
    from controller.research.tasks.trainer_run import data_refs, eval_job_spec
    from controller.sandbox.spec import Status
    from trainer.presets import PRESETS

    preset = PRESETS["cpu-tiny"]
    build = {"forger": hostile.stateful_forger, "oob_write": hostile.out_of_bounds_write}
    data = build[attack](preset.data.eval_batch_size, preset.data.seq_len, 257)
    _, val_data = data_refs(executor, tiny_data)
    result = executor.run_job(eval_job_spec(data, preset, val_data, runtime))
    assert result.status is Status.ERROR, result
    assert result.exception is not None and result.exception.type == "ArchiveError"
    assert refused in result.exception.message
    assert "val_bpb" not in result.metrics
