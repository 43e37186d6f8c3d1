"""Level 2's verdict on a mechanism on trial: a randomised comparison run concurrently.

Design. While a candidate is on trial, the trials of its window are grouped in pairs by
index - (start, start+1), (start+2, start+3), ... - and a coin seeded by the run's seed,
the candidate's name and the pair decides which trial of each pair runs WITH the
candidate and which WITHOUT it (its hooks are not called for that trial; the proposer
and the mechanisms already kept act on both). Neighbours in time see the same stage of
the search, so what drifts over a run - keep rates fall as a search converges, the
incumbent gets harder to beat - cancels within a pair: a mechanism of a given effect gets
the same verdict early or late. On a WITH trial the candidate's suggestion comes first,
so a kept suggest-mechanism cannot take every slot from it.

Score. Each trial's improvement over the incumbent it was judged against, in units of
the noise sigma (the std of the baseline's seeds), z = (incumbent - val_bpb) / sigma, is
scored y = asinh(clip(z, -1000, 1000)): about z within the noise, logarithmic beyond,
so one outlier cannot dominate a window yet a far better trial still scores higher (a
hard clip at a few sigma would tie the big early improvements of both arms and leave the
test blind there); a crash scores as the clip's floor, -asinh(1000). Without a baseline
sigma (a one-seed keep rule) the run's own spread stands in and the score says so; sigma
only sets the scale of the compression - the test below is valid for any scoring fixed
before the coins are read, so a poor sigma costs power, never validity.

Test. Only complete pairs count (both trials proposed under the design and finished).
The statistic is the mean paired difference T = mean(y_with - y_without). Its one-sided
p value is exact randomisation inference: under the null that the candidate changes no
trial's score, each pair's two labellings were equally likely, so p is the share of the
2^pairs sign flips of the differences whose mean is >= T (4096 seeded draws beyond 12
pairs). KEPT when p <= ALPHA and the candidate changed at least one WITH trial;
otherwise REVERTED. A mechanism that changes nothing is therefore kept at a rate of at
most ALPHA wherever it lands in a run. MIN_PAIRS is the fewest pairs for which p can
reach ALPHA (2^-4 = 0.0625), so a window is never shorter than 2 * MIN_PAIRS trials.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import random
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

from controller.store.records import TrialRecord, TrialStatus

ALPHA = 0.1
CLIP_Z = 1000.0
CLIP = math.asinh(CLIP_Z)  # the largest |y|; a crash scores -CLIP
MIN_PAIRS = 4
EXACT_PAIRS = 12  # up to 4096 sign flips enumerated; beyond, 4096 drawn
TEST = (f"one-sided paired randomisation test of mean(y_with - y_without) over complete "
        f"pairs, y = asinh(clip((incumbent - val_bpb)/sigma, +-{CLIP_Z:g})), crash = "
        f"-asinh({CLIP_Z:g}); kept when p <= {ALPHA:g} and it changed a WITH trial")


def window_length(requested: int) -> int:
    """An even number of trials, at least 2 * MIN_PAIRS."""
    return max(requested + requested % 2, 2 * MIN_PAIRS)


def with_arm(seed: int, name: str, start: int, index: int) -> bool:
    """Whether trial `index` runs with the candidate (activated at trial `start`)."""
    pair, position = divmod(index - start, 2)
    coin = hashlib.sha256(f"{seed}:{name}:{pair}".encode()).digest()[0] & 1
    return position == coin


def score(val_bpb: float | None, incumbent: float | None, sigma: float) -> float:
    if val_bpb is None or incumbent is None:
        return -CLIP
    return math.asinh(max(-CLIP_Z, min(CLIP_Z, (incumbent - val_bpb) / sigma)))


def trial_scores(trials: Sequence[TrialRecord], sigma: float | None
                 ) -> tuple[dict[int, float], float, str]:
    """(index -> y for each finished search trial, the sigma used, where it came from).
    Without a baseline sigma (a single-seed keep rule) the spread of the run's own
    values stands in (1.4826 * MAD), and the returned source says so."""
    done = [t for t in sorted(trials, key=lambda t: t.index) if t.finished and t.status]
    source = "the baseline's seeds"
    if not sigma or sigma <= 0:
        vals = [t.val_bpb for t in done if t.val_bpb is not None]
        mid = statistics.median(vals) if vals else 0.0
        sigma = 1.4826 * statistics.median([abs(v - mid) for v in vals]) if vals else 0.0
        source = "1.4826 * MAD of the run's values (no baseline sigma)"
        if sigma <= 0:
            sigma, source = 1.0, "1.0 (no spread to measure)"
    out: dict[int, float] = {}
    best: float | None = None
    for t in done:
        if t.index > 0:
            crashed = t.status is TrialStatus.CRASH
            out[t.index] = score(None if crashed else t.val_bpb, best, sigma)
        if t.status is TrialStatus.KEEP:
            best = t.val_bpb
    return out, sigma, source


@dataclass(frozen=True)
class MechanismVerdict:
    """Level 2's decision on a mechanism after its judging window: keep it or revert it."""

    keep: bool
    judged: bool  # False: too few complete pairs for the test
    p: float | None
    effect: float | None  # T, in sigma units
    pairs: list[tuple[int, int]]  # (with index, without index)
    changed: int  # WITH trials the candidate changed
    reason: str

    def to_json(self) -> dict[str, object]:
        return {**asdict(self), "test": TEST, "alpha": ALPHA}


def complete_pairs(start: int, end: int, with_: Sequence[int], without: Sequence[int],
                   scores: Mapping[int, float]) -> list[tuple[int, int]]:
    """(with, without) for each pair of the window whose two trials were both assigned
    by the design and have a score."""
    w, wo = set(with_), set(without)
    out = []
    for first in range(start, end + 1, 2):
        pair = (first, first + 1)
        yes = [i for i in pair if i in w and i in scores]
        no = [i for i in pair if i in wo and i in scores]
        if len(yes) == 1 and len(no) == 1:
            out.append((yes[0], no[0]))
    return out


def p_value(diffs: Sequence[float], seed: str) -> float:
    """Randomised p: (flips with a mean above the observed + U * flips that tie) / flips,
    U uniform from a generator seeded by `seed`. Clipped scores tie often (early in a
    search most trials hit a clip), and counting ties as hits would make the test more
    conservative where ties are common, i.e. depend on the stage of the run; breaking
    them with U gives p exactly uniform under the null at every stage."""
    rng = random.Random(seed)
    observed = sum(diffs)
    eps = 1e-9 * (1 + sum(abs(d) for d in diffs))
    if len(diffs) <= EXACT_PAIRS:
        flips: list[tuple[int, ...]] = list(itertools.product((1, -1), repeat=len(diffs)))
    else:
        flips = [(1,) * len(diffs)] + [tuple(rng.choice((1, -1)) for _ in diffs)
                                       for _ in range(4095)]
    sums = [sum(s * d for s, d in zip(f, diffs, strict=True)) for f in flips]
    above = sum(x > observed + eps for x in sums)
    ties = sum(abs(x - observed) <= eps for x in sums)
    return (above + rng.random() * ties) / len(flips)


def decide(seed: int, name: str, start: int, end: int, with_: Sequence[int],
           without: Sequence[int], scores: Mapping[int, float],
           changed: int) -> MechanismVerdict:
    pairs = complete_pairs(start, end, with_, without, scores)
    if len(pairs) < MIN_PAIRS:
        return MechanismVerdict(False, False, None, None, pairs, changed,
                                f"not judged: {len(pairs)} complete with/without pairs in "
                                f"trials {start}-{end}, the test needs {MIN_PAIRS} to reach "
                                f"p <= {ALPHA:g}")
    diffs = [scores[a] - scores[b] for a, b in pairs]
    effect = sum(diffs) / len(diffs)
    p = p_value(diffs, f"{seed}:{name}:{start}")
    stats = (f"mean(y_with - y_without) = {effect:+.2f} sigma over {len(pairs)} pairs, "
             f"one-sided randomisation p = {p:.3f}")
    if changed == 0:
        return MechanismVerdict(False, True, p, effect, pairs, changed,
                                f"reverted: it changed none of its WITH trials ({stats})")
    keep = p <= ALPHA
    verb = "kept" if keep else "reverted"
    why = f"p <= {ALPHA:g}" if keep else f"p > {ALPHA:g}: no evidence it helps"
    return MechanismVerdict(keep, True, p, effect, pairs, changed,
                            f"{verb}: {stats}; {why}; it changed {changed} WITH trial(s)")
