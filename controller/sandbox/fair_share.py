"""Sandbox slots shared between principals, not between runs: weighted dominant-resource
fairness (DRF) over job slots and GPU slots, within each principal's slot quotas.

Two resources are handed out: job slots (every job holds one) and GPU slots (a job on a
GPU host holds one too). A principal's dominant share is the larger of its fractions of
each, divided by its weight (`quotas.*.weight`). When a slot frees, it goes to the
waiting principal with the smallest dominant share whose next job fits the free
resources and its own quotas (`quotas.*.slots`, `quotas.*.gpu_slots`); its jobs go in
the order they arrived. So one principal's ten queued jobs do not delay another's one:
the newcomer holds nothing, so its share is the smallest and the next free slot is its.

Ties (equal shares, e.g. two principals holding nothing) go to the principal with less
recent use: its weighted dominant share integrated over time, decaying with a half life
(`half_life_seconds`), as Slurm's fair-share factor does; then to the earliest job.

Why DRF and not weighted fair queuing: WFQ orders jobs by virtual finish time, which
needs each job's length, and a trial's length is unknown until it ends; DRF needs only
what each principal holds now, and with one resource it is weighted max-min fairness.
Every job here takes one job slot (and on a GPU host one GPU slot), so the dominant
share is the slot share; DRF keeps the rule right where the two differ (quotas that
leave GPU slots idle, a backend whose slots are not all GPU slots).

A principal over its slot quota waits for its own jobs to end, even with slots free:
quotas bound concurrency, they do not fail the job.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from controller.quotas import Quotas

POLL_SECONDS = 0.5  # how often a waiting job looks at its cancel event
HALF_LIFE_SECONDS = 3600.0  # of the past use that breaks ties


@dataclass
class Grant:
    """One job's slot (and `gpus` GPU slots), held until released."""

    principal: str
    gpus: int
    released: bool = False


@dataclass
class _Waiter:
    principal: str
    gpus: int
    seq: int
    grant: Grant | None = None


@dataclass
class _Account:
    """What a principal holds now, and its decayed past use."""

    slots: int = 0
    gpus: int = 0
    usage: float = 0.0
    updated: float = 0.0


class FairShare:
    """Thread-safe. `slots` job slots, `gpu_slots` of them also GPU slots."""

    def __init__(self, slots: int, gpu_slots: int = 0, quotas: Quotas | None = None,
                 half_life_seconds: float = HALF_LIFE_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if slots < 1 or not 0 <= gpu_slots <= slots:
            raise ValueError(f"need slots >= 1 and 0 <= gpu_slots <= slots, got {slots}, "
                             f"{gpu_slots}")
        self.slots = slots
        self.gpu_slots = gpu_slots
        self.quotas = quotas or Quotas()
        self.half_life = half_life_seconds
        self._clock = clock
        self._free, self._free_gpus = slots, gpu_slots
        self._accounts: dict[str, _Account] = {}
        self._waiting: list[_Waiter] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()

    def acquire(self, principal: str, *, gpus: int = 0, timeout: float | None = None,
                cancel: threading.Event | None = None) -> Grant | None:
        """Wait for a slot (and `gpus` GPU slots) for one job of `principal`; None when
        `timeout` seconds pass or `cancel` is set first."""
        if gpus > self.gpu_slots:
            raise ValueError(f"a job asks for {gpus} GPU slots; there are {self.gpu_slots}")
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            waiter = _Waiter(principal, gpus, next(self._seq))
            self._waiting.append(waiter)
            self._dispatch()
            while waiter.grant is None:
                left = None if deadline is None else deadline - time.monotonic()
                if (left is not None and left <= 0) or (cancel is not None and cancel.is_set()):
                    self._waiting.remove(waiter)
                    self._dispatch()  # it may have been the one that blocked others
                    return None
                self._cond.wait(POLL_SECONDS if left is None else min(left, POLL_SECONDS))
            return waiter.grant

    def try_acquire(self, principal: str, *, gpus: int = 0) -> Grant | None:
        """A slot now, if the rule gives one to this job without waiting."""
        return self.acquire(principal, gpus=gpus, timeout=0)

    def release(self, grant: Grant) -> None:
        with self._cond:
            if grant.released:
                return
            grant.released = True
            self._decay()  # the past use counts what was held until now
            account = self._account(grant.principal)
            account.slots -= 1
            account.gpus -= grant.gpus
            self._free += 1
            self._free_gpus += grant.gpus
            self._dispatch()

    def holding(self) -> dict[str, tuple[int, int]]:
        """principal -> (job slots, GPU slots) it holds now, for those holding any."""
        with self._cond:
            return {p: (a.slots, a.gpus) for p, a in self._accounts.items() if a.slots}

    def waiting(self) -> dict[str, int]:
        """principal -> how many of its jobs wait for a slot now."""
        with self._cond:
            out: dict[str, int] = {}
            for w in self._waiting:
                out[w.principal] = out.get(w.principal, 0) + 1
            return out

    def share(self, principal: str) -> float:
        """The principal's dominant share now, divided by its weight."""
        with self._cond:
            return self._share(principal, self._account(principal))

    def _account(self, principal: str) -> _Account:
        account = self._accounts.get(principal)
        if account is None:
            account = self._accounts[principal] = _Account(updated=self._clock())
        return account

    def _share(self, principal: str, account: _Account) -> float:
        dominant = account.slots / self.slots
        if self.gpu_slots:
            dominant = max(dominant, account.gpus / self.gpu_slots)
        return dominant / self.quotas.of(principal).weight

    def _decay(self) -> None:
        """Bring every account's past use up to now (exact for a share held constant
        since the last update)."""
        now = self._clock()
        for principal, account in self._accounts.items():
            elapsed = max(0.0, now - account.updated)
            factor = 0.5 ** (elapsed / self.half_life)
            held = self._share(principal, account)
            account.usage = account.usage * factor \
                + held * (1 - factor) * self.half_life / math.log(2)
            account.updated = now

    def _eligible(self, waiter: _Waiter) -> bool:
        """Fits the free resources and the principal's own slot quotas."""
        if self._free < 1 or self._free_gpus < waiter.gpus:
            return False
        limits = self.quotas.of(waiter.principal)
        account = self._account(waiter.principal)
        if limits.slots is not None and account.slots + 1 > limits.slots:
            return False
        return not (waiter.gpus and limits.gpu_slots is not None
                    and account.gpus + waiter.gpus > limits.gpu_slots)

    def _next(self) -> _Waiter | None:
        """The job the rule gives the next slot to (see the module's doc)."""
        firsts: dict[str, _Waiter] = {}
        for waiter in self._waiting:  # in arrival order: each principal's first that fits
            if waiter.principal not in firsts and self._eligible(waiter):
                firsts[waiter.principal] = waiter
        if not firsts:
            return None

        def rank(w: _Waiter) -> tuple[float, float, int]:
            account = self._account(w.principal)  # share and past use, both weighted
            return self._share(w.principal, account), account.usage, w.seq

        return min(firsts.values(), key=rank)

    def _dispatch(self) -> None:
        """Grant slots while one is free and a job may take it; wake the waiters."""
        self._decay()
        granted = False
        while (waiter := self._next()) is not None:
            account = self._account(waiter.principal)
            account.slots += 1
            account.gpus += waiter.gpus
            self._free -= 1
            self._free_gpus -= waiter.gpus
            waiter.grant = Grant(waiter.principal, waiter.gpus)
            self._waiting.remove(waiter)
            granted = True
        if granted:
            self._cond.notify_all()
