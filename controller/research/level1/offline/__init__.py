"""The registry of offline proposers: seeded, non-LLM, no API key.

Each proposer is one module of this package, named as users name it (`tpe.py` is
`--proposer tpe`), that registers itself with a module-level

    PROPOSER = OfflineProposer(name="tpe", description="...", build=TPEProposer, ...)

and nothing else is needed: the CLI's help, the settings' validation, the API's enum
mapping (controller/api/enums.py, by name: PROPOSER_KIND_<NAME>), the ablation's arms,
the bench and the tests all read this registry. Adding one is one new file plus its
test, and a value in the API's ProposerKind enum (a test fails until they agree).

Every proposer is built the same way, from a ProposerSetup (the run's seed, the
baseline's knobs, the proposer settings), and follows the Proposer protocol's resume
rule (proposer.py): its state is rebuilt from the stored trials on every proposal.

Listing a proposer imports its module but nothing heavy: a module imports its optimizer
library (Optuna, cmaes, scipy) when a proposer is built, so `--help` and the settings'
validation stay fast.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from trainer.knobs import KnobValue

if TYPE_CHECKING:
    from controller.research.level1.proposer import Proposer

DEFAULT = "local"  # the proposer of a run that names none and has no LLM
RENAMED = {"random": "'random' was renamed: use 'local' (the (1+1) perturbation of the "
                     "incumbent it was) or 'random_search' (true random search over the "
                     "typed ranges)"}


class StepSettings(Protocol):
    """The proposer settings an offline proposer reads (research/settings.py's
    ProposerSettings, which validates them and reads this registry's names)."""

    @property
    def max_changes(self) -> int: ...  # knobs one proposal may change

    @property
    def step(self) -> float: ...  # a perturbation's scale, as a share of a knob's range


@dataclass(frozen=True)
class ProposerSetup:
    """What every offline proposer is built from."""

    seed: int  # the run's search seed
    baseline: Mapping[str, KnobValue]  # the knobs of the baseline (trial 0's train.py)
    settings: StepSettings


@dataclass(frozen=True)
class OfflineProposer:
    """One offline proposer, as its module registers it."""

    name: str  # what users pass: --proposer NAME, proposer.kind, an ablation arm
    description: str  # one line for the CLI's help, e.g. "Optuna's TPE sampler"
    build: Callable[[ProposerSetup], Proposer]
    # Its own ablation arm (Level 1 only, this proposer): the arm's title, or "" for none
    # (the default proposer is arm A's offline form already).
    arm: str = ""
    default_arm: bool = False  # whether `bilevel ablate` runs that arm by default


class UnknownProposer(KeyError):
    """A proposer name the registry does not hold; the message lists the known ones."""

    def __str__(self) -> str:
        return str(self.args[0])


@functools.cache
def _registry() -> dict[str, OfflineProposer]:
    found: dict[str, OfflineProposer] = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        entry = getattr(module, "PROPOSER", None)
        if not isinstance(entry, OfflineProposer):
            raise TypeError(f"{module.__name__} registers no PROPOSER = OfflineProposer(...)")
        if entry.name != info.name:
            raise ValueError(f"{module.__name__} registers {entry.name!r}: a proposer's "
                             "module is named as the proposer")
        found[entry.name] = entry
    return {name: found[name] for name in sorted(found, key=lambda n: (n != DEFAULT, n))}


def all_proposers() -> tuple[OfflineProposer, ...]:
    """Every offline proposer: the default first, then by name."""
    return tuple(_registry().values())


def names() -> tuple[str, ...]:
    return tuple(_registry())


def get(name: str) -> OfflineProposer:
    """The registered proposer `name`; UnknownProposer says what it is called now (a
    renamed one) or lists the known ones."""
    try:
        return _registry()[name]
    except KeyError:
        raise UnknownProposer(RENAMED.get(name, f"{name!r} is not an offline proposer; "
                                                f"known: {', '.join(names())}")) from None


def build(name: str, setup: ProposerSetup) -> Proposer:
    """A new proposer of kind `name`. Raises UnknownProposer."""
    return get(name).build(setup)
