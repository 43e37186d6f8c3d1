"""The admission arithmetic (controller/api/admission.py) and the client identity, as
pure logic: what is counted, when it is given back, and what a refusal names."""

from __future__ import annotations

import asyncio

import pytest

from controller.api.admission import Admission, ByteBudget, StreamBudget, Ticket
from controller.api.auth import client_identity
from controller.principals import Principal, Role
from controller.research.errors import CapacityError


def test_stream_budget_counts_per_client_and_in_all() -> None:
    budget = StreamBudget(total=3, per_client=2)
    budget.enter("a")
    budget.enter("a")
    with pytest.raises(CapacityError) as info:
        budget.enter("a")
    assert info.value.resource == "server.max_streams_per_client"
    budget.enter("b")
    with pytest.raises(CapacityError) as info:
        budget.enter("c")
    assert info.value.resource == "server.max_streams"
    budget.leave("a")
    budget.enter("c")
    assert budget.open == {"a": 1, "b": 1, "c": 1} and budget.in_use == 3


def test_a_ticket_charges_the_cap_until_read_then_the_body_and_releases_once() -> None:
    released: list[int] = []
    budget = ByteBudget(1000, on_release=lambda: released.append(budget.in_use),
                        give_back_bytes=300)
    places = Admission(slots=1, queue=1)
    first = Ticket(budget, 600, declared=False, admission=places)
    first.reserve()
    assert (budget.in_use, first.position, places.in_flight) == (600, 0, 1)
    second = Ticket(budget, 600, declared=False, admission=places)
    assert second.position == 1
    with pytest.raises(CapacityError) as info:
        second.reserve()  # 600 + 600 > 1000
    assert info.value.resource == "server.max_request_bytes_in_flight"
    assert "its method's cap" in str(info.value)
    with pytest.raises(CapacityError):
        Ticket(budget, 1, declared=True, admission=places)  # no place left
    first.observed(200)
    second.reserve()
    assert budget.in_use == 800
    second.call_ended()
    second.call_ended()
    first.release()
    assert (budget.in_use, places.in_flight) == (0, 0)
    assert released == [200]  # only the 600 release was large enough to give back


def test_a_kept_ticket_lasts_until_its_job_ends() -> None:
    async def scenario() -> tuple[int, int]:
        budget = ByteBudget(1000)
        ticket = Ticket(budget, 10, declared=True, admission=None)
        ticket.reserve()
        job: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        ticket.keep_until(job)
        ticket.call_ended()
        held = budget.in_use
        job.set_result(None)
        await asyncio.sleep(0)
        return held, budget.in_use

    assert asyncio.run(scenario()) == (10, 0)


def test_a_body_over_its_declared_size_is_refused() -> None:
    ticket = Ticket(ByteBudget(1000), 10, declared=True, admission=None)
    ticket.reserve()
    with pytest.raises(CapacityError, match="more than the 10 it declared"):
        ticket.observed(11)


def test_a_client_is_its_principal_else_its_address_without_the_port() -> None:
    assert client_identity(None, "ipv4:127.0.0.1:5555") == "ipv4:127.0.0.1"
    assert client_identity(None, "ipv4:127.0.0.1:6666") == "ipv4:127.0.0.1"
    assert client_identity(None, "ipv6:[::1]:5555") == "ipv6:[::1]"
    alice = Principal("alice", Role.USER)
    assert client_identity(alice, "ipv4:10.0.0.1:1") == "alice"
    assert client_identity(alice, "ipv4:10.0.0.2:2") == "alice"  # from anywhere
