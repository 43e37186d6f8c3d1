"""A real controller with several principals, for the quota and fair-share tests:
principals created in the state dir's store (their tokens as `bilevel token create`
prints them), a client per principal over loopback, and Execute jobs that hold a slot
until cancelled, watched from a thread each."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from controller.api.gen.bilevel.v1 import sandbox_pb2 as spb
from controller.api.server import ControllerServer
from controller.config import ServerConfig
from controller.principals import Role
from controller.sandbox.fair_share import FairShare
from controller.sandbox.slotted import SlottedBackend
from controller.store.principals import PrincipalStore
from tests.test_api_harness import ServerThread, Stubs, serving, wait_for_engine

HOLD = b"import time\nprint('up', flush=True)\ntime.sleep(300)\n"


@contextmanager
def principals_serving(state: Path, image: str | None, roles: Mapping[str, Role],
                       factory: Callable[[ServerConfig], ControllerServer] = ControllerServer,
                       **overrides: Any) -> Iterator[tuple[ServerThread, dict[str, Stubs]]]:
    """A controller whose store defines `roles` (name -> role); yields it and a client
    per principal, the engine reached."""
    store = PrincipalStore(state / "bilevel.sqlite3")
    try:
        tokens = {name: store.create(name, role) for name, role in roles.items()}
    finally:
        store.close()
    with serving(state, image, factory=factory, **overrides) as server:
        clients = {name: Stubs(server.address, token) for name, token in tokens.items()}
        wait_for_engine(next(iter(clients.values())))
        yield server, clients


def quota_failure(error: grpc.RpcError) -> tuple[str, str]:
    """(subject, description) of a RESOURCE_EXHAUSTED error's QuotaFailure detail."""
    status = rpc_status.from_call(error)
    assert status is not None, "the error carries no rich status details"
    for detail in status.details:
        failure = error_details_pb2.QuotaFailure()
        if detail.Unpack(failure):
            return failure.violations[0].subject, failure.violations[0].description
    raise AssertionError(f"no QuotaFailure in {error}")


def slots_of(server: ServerThread) -> FairShare:
    """The controller's own slot scheduler (for what waits and what holds now)."""
    assert server.server is not None
    backend = server.server.engine.get()
    assert isinstance(backend, SlottedBackend)
    return backend.slots


class FifoSlots(FairShare):
    """The sensitivity twin of the fair-share rule: the next free slot goes to the job
    that has waited longest, whoever's it is (a semaphore's order), quotas kept."""

    def _next(self) -> Any:
        return next((w for w in self._waiting if self._eligible(w)), None)


class FifoServer(ControllerServer):
    """A controller whose sandbox slots are handed out first come, first served."""

    def __init__(self, config: ServerConfig) -> None:
        super().__init__(config)
        backend = self.engine.get()
        assert isinstance(backend, SlottedBackend)
        backend.slots = FifoSlots(backend.slots.slots, backend.slots.gpu_slots,
                                  backend.slots.quotas)


class Job:
    """One Execute call of a job that holds its slot until cancelled."""

    def __init__(self, clients: Mapping[str, Stubs], principal: str) -> None:
        self.principal = principal
        stubs = clients[principal]
        self.call = stubs.sandbox.Execute(
            spb.ExecuteRequest(files={"main.py": HOLD}, command=["python3", "main.py"]),
            metadata=stubs.metadata, timeout=240)
        self.started_at: float | None = None
        self.error: grpc.RpcError | None = None
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        try:
            for event in self.call:
                if event.WhichOneof("event") == "started" and self.started_at is None:
                    self.started_at = time.monotonic()
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                self.error = exc

    @property
    def started(self) -> bool:
        return self.started_at is not None

    def cancel(self) -> None:
        self.call.cancel()
        self._thread.join(60)


def until(condition: Callable[[], bool], timeout: float = 60.0, what: str = "") -> float:
    """Wait for `condition`; returns when it held (time.monotonic())."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        time.sleep(0.02)
    return time.monotonic()
