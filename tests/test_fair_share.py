"""Fair share on a real controller over a real socket, jobs on the real engine (issue 20,
part 4): the sandbox slots are shared between principals, not between runs or jobs.
Each job is an Execute call that holds its slot until the test cancels it; the slot
scheduler's own view (what waits, what holds) tells when a job has queued.

The rule is weighted dominant-resource fairness (controller/sandbox/fair_share.py);
tests/test_fair_share_rule.py has its pure-logic tests. The twin runs the same
controller with first-come-first-served slots (tests/quota_harness.py's FifoSlots)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import pytest

from controller.principals import Role
from controller.quotas import QuotaLimits, Quotas
from controller.sandbox.fair_share import FairShare
from tests.quota_harness import FifoServer, Job, principals_serving, slots_of, until

pytestmark = pytest.mark.docker


@contextmanager
def cancelling(jobs: list[Job]) -> Iterator[list[Job]]:
    try:
        yield jobs
    finally:
        for job in jobs:
            job.cancel()


def _waiting_total(slots: FairShare, total: int) -> bool:
    return sum(slots.waiting().values()) == total


def _eight_and_one(tmp_path: Path, image: str, fifo: bool) -> tuple[list[Job], Job, float]:
    """4 slots; alice starts 8 long jobs (4 run, 4 queue), then bob starts 1; one of
    alice's running jobs ends. Returns alice's jobs, bob's, and when the slot was
    freed; the jobs are left as they are at the first start after it."""
    roles = {"alice": Role.USER, "bob": Role.USER}
    factory = FifoServer if fifo else None
    kwargs = {"factory": factory} if factory else {}
    with principals_serving(tmp_path, image, roles, slots=4, execute_queue=8,
                            **kwargs) as (server, clients):
        slots = slots_of(server)
        alice = [Job(clients, "alice") for _ in range(8)]
        with cancelling(alice):
            until(lambda: sum(j.started for j in alice) == 4 and
                  slots.waiting() == {"alice": 4}, what="alice's 4 running, 4 queued")
            bob = Job(clients, "bob")
            with cancelling([bob]):
                until(lambda: slots.waiting() == {"alice": 4, "bob": 1}, what="bob queued")
                running = [j for j in alice if j.started]
                freed = time.monotonic()
                running[0].cancel()
                queued = [j for j in alice if not j.started]
                until(lambda: bob.started or any(j.started for j in queued),
                      what="the freed slot to be taken")
                time.sleep(0.5)  # a second start right after would show here
                return alice, bob, freed


def test_deny_one_principals_queue_starving_another_principals_job(
        tmp_path: Path, sandbox_image: str) -> None:
    alice, bob, freed = _eight_and_one(tmp_path, sandbox_image, fifo=False)
    assert bob.started and bob.error is None
    assert sum(j.started for j in alice) == 4  # 3 still running + the cancelled one
    assert bob.started_at is not None
    print(f"bob's job started {bob.started_at - freed:.2f} s after alice's slot was freed")
    assert bob.started_at - freed < 15


def test_sensitivity_first_come_first_served_slots_keep_the_late_principal_waiting(
        tmp_path: Path, sandbox_image: str) -> None:
    alice, bob, _ = _eight_and_one(tmp_path, sandbox_image, fifo=True)
    assert not bob.started
    assert sum(j.started for j in alice) == 5  # alice's fifth job took the freed slot


def test_three_principals_share_the_slots_by_weight(tmp_path: Path,
                                                    sandbox_image: str) -> None:
    """Weights 1, 1, 2 over 4 slots. alice holds all 4 and queues one more; bob and
    carol queue 4 each. As alice's first four end, the slots go to bob, carol, carol
    (the smallest share each time; bob before carol on a tie, as he asked first), then
    back to alice: 1, 1 and 2 slots."""
    quotas = Quotas(principals={"carol": {"weight": 2.0}})
    roles = {"alice": Role.USER, "bob": Role.USER, "carol": Role.ADMIN}
    with principals_serving(tmp_path, sandbox_image, roles, slots=4, execute_queue=16,
                            quotas=quotas) as (server, clients):
        slots = slots_of(server)
        alice = [Job(clients, "alice") for _ in range(5)]
        with cancelling(alice):
            until(lambda: slots.waiting() == {"alice": 1}, what="alice's jobs placed")
            bob = [Job(clients, "bob") for _ in range(4)]
            until(lambda: slots.waiting().get("bob") == 4, what="bob queued")
            carol = [Job(clients, "carol") for _ in range(4)]
            with cancelling(bob + carol):
                until(lambda: slots.waiting().get("carol") == 4, what="carol queued")
                until(lambda: sum(j.started for j in alice) == 4, what="alice's 4 running")
                order = []
                for job in [j for j in alice if j.started]:
                    waiting = slots.waiting()
                    job.cancel()
                    until(partial(_waiting_total, slots, sum(waiting.values()) - 1),
                          what="the freed slot handed on")
                    now = slots.waiting()
                    order += [p for p in waiting if now.get(p, 0) < waiting[p]]
                assert order == ["bob", "carol", "carol", "alice"]
                assert {p: n for p, (n, _) in slots.holding().items()} == \
                    {"alice": 1, "bob": 1, "carol": 2}
                until(lambda: sum(j.started for j in bob + carol) == 3,
                      what="the granted jobs to start")


def test_a_principal_at_its_slot_quota_waits_while_another_uses_the_free_slots(
        tmp_path: Path, sandbox_image: str) -> None:
    """alice may hold 1 slot (quotas.default.slots): her second job waits with 3 slots
    free, and bob's job starts at once; when her first ends, her second starts."""
    roles = {"alice": Role.USER, "bob": Role.ADMIN}
    quotas = Quotas(default=QuotaLimits(slots=1))
    with principals_serving(tmp_path, sandbox_image, roles, slots=4,
                            quotas=quotas) as (server, clients):
        slots = slots_of(server)
        first, second = Job(clients, "alice"), Job(clients, "alice")
        with cancelling([first, second]):
            until(lambda: slots.waiting() == {"alice": 1} and
                  slots.holding() == {"alice": (1, 0)}, what="alice's second queued")
            bob = Job(clients, "bob")
            with cancelling([bob]):
                # alice's holder may start after bob's job (its container is made
                # separately): pick it only once it has started, never the queued one
                until(lambda: bob.started and (first.started or second.started),
                      what="bob's job and alice's first to start")
                assert slots.waiting() == {"alice": 1}
                assert not (first.started and second.started)
                held = first if first.started else second
                held.cancel()
                until(lambda: first.started and second.started, what="alice's second")
                assert slots.holding() == {"alice": (1, 0), "bob": (1, 0)}
