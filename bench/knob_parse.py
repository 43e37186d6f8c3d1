"""What a candidate's hostile constant costs the controller: reading the knobs of the GPT
task's train.py with one line `UNUSED = <expression>` added, and the code-mode protection
check of that candidate, against the same train.py without the line (the baseline).
Medians of --repeats runs, in milliseconds. Every expression should cost about what the
baseline costs (the knob parser refuses an unbounded value before computing it; each
would take seconds to forever if evaluated).

    python -m bench.knob_parse [--repeats 21]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from controller.research.level1.protect import TRAINER
from trainer.knobs import read_knobs
from trainer.presets import TRAIN_PY

EXPRESSIONS = ("9**9**9", "7**7**8", "2<<10**9", '"a"*10**12', "[0]*10**9",
               "((((10**64)**64)**64)**64)**64", "2.0**9**9**9", "-(9**9**9)")


def median_ms(work: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=21)
    args = parser.parse_args()
    base = TRAIN_PY.read_text(encoding="utf-8")
    print(f"{'candidate line':<36} {'read_knobs ms':>14} {'protect ms':>11}")
    rows = [("(baseline: train.py as it is)", base)]
    rows += [(f"UNUSED = {e}", f"{base}\nUNUSED = {e}\n") for e in EXPRESSIONS]
    for title, source in rows:
        read = median_ms(lambda s=source: read_knobs(s), args.repeats)  # type: ignore[misc]
        check = median_ms(lambda s=source: TRAINER.check(base, s),  # type: ignore[misc]
                          args.repeats)
        print(f"{title:<36} {read:>14.2f} {check:>11.2f}", flush=True)


if __name__ == "__main__":
    main()
