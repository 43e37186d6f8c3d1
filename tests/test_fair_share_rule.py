"""The fair-share rule alone (controller/sandbox/fair_share.py): which waiting job gets
the next free slot. Pure logic, real threads, a fake clock for the past-use tie-break;
tests/test_fair_share.py shows the same on a real controller and engine."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from controller.quotas import QuotaLimits, Quotas
from controller.sandbox.fair_share import FairShare, Grant


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Jobs:
    """Jobs that wait for slots on threads; `granted` lists them in the order served."""

    def __init__(self, slots: FairShare) -> None:
        self.slots = slots
        self.granted: list[tuple[str, Grant]] = []
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def submit(self, principal: str, count: int = 1, gpus: int = 0) -> None:
        for _ in range(count):
            before = self._seen(principal)
            thread = threading.Thread(target=self._wait, args=(principal, gpus), daemon=True)
            thread.start()
            self._threads.append(thread)
            # queued, or served and recorded, before the next one arrives
            _until(lambda before=before: self._seen(principal) > before)

    def _seen(self, principal: str) -> int:
        with self._lock:
            served = sum(1 for p, _ in self.granted if p == principal)
        return served + self.slots.waiting().get(principal, 0)

    def _wait(self, principal: str, gpus: int) -> None:
        grant = self.slots.acquire(principal, gpus=gpus, timeout=30)
        assert grant is not None
        with self._lock:
            self.granted.append((principal, grant))

    def held(self, principal: str) -> int:
        return self.slots.holding().get(principal, (0, 0))[0]

    def release_first(self, principal: str) -> None:
        """End the earliest running job of `principal`, and wait for the slot to be
        handed on (or left free)."""
        served = len(self.granted)
        waiting = sum(self.slots.waiting().values())
        grant = next(g for p, g in self.granted if p == principal and not g.released)
        self.slots.release(grant)  # hands the slot on before it returns
        if sum(self.slots.waiting().values()) < waiting:
            _until(lambda: len(self.granted) > served)

    def order(self) -> list[str]:
        return [p for p, _ in self.granted]

    def close(self) -> None:
        """Release every grant, the late ones too, until every job has been served."""
        deadline = time.monotonic() + 10
        while any(t.is_alive() for t in self._threads) and time.monotonic() < deadline:
            with self._lock:
                grants = [g for _, g in self.granted]
            for grant in grants:
                self.slots.release(grant)
            time.sleep(0.005)


def _until(condition: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.005)


@contextmanager
def jobs(slots: FairShare) -> Iterator[Jobs]:
    running = Jobs(slots)
    try:
        yield running
    finally:
        running.close()


def test_deny_one_principals_queue_delaying_anothers_job() -> None:
    """4 slots; alice runs 4 and queues 4 more; bob's one job takes the next free slot."""
    with jobs(FairShare(4, clock=Clock())) as j:
        j.submit("alice", 8)
        assert j.held("alice") == 4 and j.slots.waiting() == {"alice": 4}
        j.submit("bob")
        j.release_first("alice")
        assert j.order()[-1] == "bob"
        assert j.slots.waiting() == {"alice": 4}
        assert j.slots.holding() == {"alice": (3, 0), "bob": (1, 0)}


def test_allow_a_principal_alone_to_use_every_slot() -> None:
    """Work-conserving: shares matter only while several principals wait."""
    with jobs(FairShare(4, clock=Clock())) as j:
        j.submit("alice", 6)
        assert j.held("alice") == 4
        j.release_first("alice")
        assert j.held("alice") == 4 and j.slots.waiting() == {"alice": 1}


def test_weights_set_the_shares_of_three_principals() -> None:
    """Weights 1, 1, 2 over 4 slots: carol ends with two, alice and bob one each."""
    quotas = Quotas(principals={"carol": {"weight": 2.0}})
    with jobs(FairShare(4, quotas=quotas, clock=Clock())) as j:
        j.submit("alice", 8)
        j.submit("bob", 4)
        j.submit("carol", 4)
        for _ in range(4):
            j.release_first("alice")
        assert j.order()[4:] == ["bob", "carol", "carol", "alice"]
        assert j.slots.holding() == {"alice": (1, 0), "bob": (1, 0), "carol": (2, 0)}
        assert j.slots.share("carol") == j.slots.share("bob") == 0.25


def test_equal_shares_go_to_the_principal_with_less_past_use() -> None:
    """Slurm's rule for ties: alice used the slot for an hour, bob never did; both hold
    nothing now and alice asked first, but bob is served first."""
    clock = Clock()
    with jobs(FairShare(1, clock=clock)) as j:
        j.submit("alice")
        clock.now += 3600
        j.release_first("alice")
        j.submit("carol")  # holds the slot while alice and bob queue
        j.submit("alice")
        j.submit("bob")
        j.release_first("carol")
        assert j.order() == ["alice", "carol", "bob"]


def test_a_principal_at_its_slot_quota_waits_while_slots_are_free() -> None:
    quotas = Quotas(default=QuotaLimits(slots=2))
    with jobs(FairShare(4, quotas=quotas, clock=Clock())) as j:
        j.submit("alice", 3)
        assert j.held("alice") == 2 and j.slots.waiting() == {"alice": 1}
        j.submit("bob")
        assert j.held("bob") == 1
        j.release_first("alice")
        assert j.held("alice") == 2 and j.slots.waiting() == {}


def test_an_exempt_principal_has_no_slot_quota() -> None:
    quotas = Quotas(default=QuotaLimits(slots=1), exempt=frozenset({"ops"}))
    with jobs(FairShare(3, quotas=quotas, clock=Clock())) as j:
        j.submit("ops", 3)
        assert j.held("ops") == 3


def test_gpu_slot_quota_bounds_gpu_jobs() -> None:
    quotas = Quotas(principals={"alice": {"gpu_slots": 1}})
    with jobs(FairShare(2, gpu_slots=2, quotas=quotas, clock=Clock())) as j:
        j.submit("alice", 2, gpus=1)
        assert j.slots.holding() == {"alice": (1, 1)}
        j.submit("bob", gpus=1)
        assert j.slots.holding() == {"alice": (1, 1), "bob": (1, 1)}


def test_a_timed_out_or_cancelled_wait_holds_nothing() -> None:
    slots = FairShare(1, clock=Clock())
    held = slots.acquire("alice")
    assert held is not None
    assert slots.acquire("bob", timeout=0.05) is None
    cancel = threading.Event()
    threading.Timer(0.05, cancel.set).start()
    assert slots.acquire("bob", cancel=cancel) is None
    assert slots.waiting() == {}
    slots.release(held)
    slots.release(held)  # a second release of one grant changes nothing
    assert slots.holding() == {}
    assert slots.try_acquire("bob") is not None


def test_deny_more_gpu_slots_than_the_host_has() -> None:
    with pytest.raises(ValueError, match="asks for 2 GPU slots; there are 1"):
        FairShare(1, gpu_slots=1).acquire("alice", gpus=2)
