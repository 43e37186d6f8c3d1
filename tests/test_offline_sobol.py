"""The `sobol` offline proposer: a scrambled Sobol sequence over the typed knobs. Its
first trial proposes, the first 2**m points put one point in each of 2**m equal slices of
every knob's axis, a proposal depends only on the seed and the trial (so a resumed run
proposes the same trials), and a retry after a rejection moves elsewhere."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from controller.research.level1 import offline
from controller.research.level1.offline.sobol import SobolSequence
from controller.research.level1.proposer import ProposerContext
from controller.research.level1.typed_points import to_unit
from tests.test_offline_proposers import TOY_SOURCE, TOY_SPACE, _loop
from trainer import knobs
from trainer.knobs import KnobValue


def _points(seed: int, count: int) -> list[dict[str, KnobValue]]:
    incumbent = knobs.read_knobs(TOY_SOURCE)
    return [SobolSequence(seed).propose(ProposerContext(i, incumbent, TOY_SPACE, ())).changes
            for i in range(1, count + 1)]


def test_it_is_registered_and_proposes_from_the_first_trial() -> None:
    assert offline.get("sobol").build is not None and "sobol" in offline.names()
    first = _points(3, 1)[0]
    TOY_SPACE.check(first)
    assert set(first) == set(TOY_SPACE.names)


def test_the_first_points_fill_every_slice_of_every_continuous_axis_once() -> None:
    points = _points(5, 16)
    for name in ("LR", "DROPOUT"):  # a log float and a linear float
        knob = TOY_SPACE.get(name)
        slices = Counter(min(int((to_unit(knob, p[name]) or 0.0) * 16), 15) for p in points)
        assert sorted(slices) == list(range(16)), (name, slices)
    # Discrete axes: every value of a 9-value power-of-two knob within 32 points.
    batches = {p["BATCH"] for p in _points(5, 32)}
    assert batches == {2 ** e for e in range(4, 13)}


def test_proposals_depend_on_the_seed_and_a_retry_moves_elsewhere() -> None:
    assert _points(5, 6) == _points(5, 6)
    assert _points(5, 6) != _points(6, 6)
    incumbent = knobs.read_knobs(TOY_SOURCE)
    ctx = ProposerContext(4, incumbent, TOY_SPACE, ())
    retry = ProposerContext(4, incumbent, TOY_SPACE, (), rejections=("too close",))
    assert SobolSequence(5).propose(ctx).changes != SobolSequence(5).propose(retry).changes


def test_a_run_stopped_midway_resumes_to_the_same_trials(tmp_path: Path) -> None:
    whole, store = _loop(tmp_path / "whole", "sobol", 5, 12)
    whole.run()
    expected = [(t.description, t.val_bpb) for t in store.trials("run-toy")]
    first, _ = _loop(tmp_path / "cut", "sobol", 5, 6)
    first.run()
    resumed, store2 = _loop(tmp_path / "cut", "sobol", 5, 12, create=False)
    resumed.run()
    assert [(t.description, t.val_bpb) for t in store2.trials("run-toy")] == expected
