"""Quotas per principal on a real controller over a real socket (issue 20, part 3): each
quota refused (or waited for) at its limit, naming `quotas.<principal>.<quota>`, the
limit and the use, atomic under concurrent calls; admins bound unless exempted. Slot
quotas bound concurrency: tests/test_fair_share.py; pure rules: test_quota_rules.py."""

from __future__ import annotations

import contextlib
import os
import re
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar, TypeAlias

import grpc
import pytest

from controller.api.gen.bilevel.v1 import runs_pb2 as rpb
from controller.api.server import ControllerServer
from controller.config import ServerConfig
from controller.llm.settings import LLMAccess
from controller.principals import Role
from controller.quotas import QuotaLimits, Quotas
from controller.research.manager import RunManager, _Place
from controller.sandbox import executor as executor_module
from controller.sandbox.backend_config import ExecutorConfig
from controller.sandbox.spec import JobResult, JobSpec, Status
from tests.fake_llm_server import FakeLLMServer
from tests.quota_harness import Job, principals_serving, quota_failure, slots_of, until
from tests.test_api_harness import Stubs
from tests.test_loop_harness import random_params_responder

pytestmark = pytest.mark.docker
Outcome: TypeAlias = rpb.Run | grpc.RpcError


def long_run() -> rpb.CreateRunRequest:
    """The surrogate scored in process: cheap, and busy far longer than the test."""
    return rpb.CreateRunRequest(task=rpb.TaskSpec(preset="surrogate", in_process=True),
                                budgets=rpb.Budgets(max_trials=100000))


def create_at_once(clients: dict[str, Stubs], calls: dict[str, int],
                   request: Callable[[int], rpb.CreateRunRequest] = lambda _: long_run()
                   ) -> dict[str, list[Outcome]]:
    """`calls[p]` CreateRuns of each principal p, all at once; every run made is
    cancelled before this returns."""
    todo = [(p, i) for p, n in calls.items() for i in range(n)]
    start = threading.Barrier(len(todo), timeout=60)

    def create(item: tuple[str, int]) -> Outcome:
        stubs = clients[item[0]]
        body = request(item[1])
        start.wait()
        try:
            run: rpb.Run = stubs.runs.CreateRun(body, metadata=stubs.metadata, timeout=120)
            return run
        except grpc.RpcError as exc:
            return exc

    with ThreadPoolExecutor(len(todo)) as pool:
        outcomes = list(pool.map(create, todo))
    out: dict[str, list[Outcome]] = {p: [] for p in calls}
    for (principal, _), outcome in zip(todo, outcomes, strict=True):
        out[principal].append(outcome)
        if isinstance(outcome, rpb.Run):
            stubs = clients[principal]
            stubs.runs.CancelRun(rpb.CancelRunRequest(run_id=outcome.id),
                                 metadata=stubs.metadata, timeout=120)
    return out


def made(outcomes: list[Outcome]) -> list[rpb.Run]:
    return [o for o in outcomes if isinstance(o, rpb.Run)]


def refusals(outcomes: list[Outcome]) -> list[tuple[str, str]]:
    errors = [o for o in outcomes if isinstance(o, grpc.RpcError)]
    assert {e.code() for e in errors} <= {grpc.StatusCode.RESOURCE_EXHAUSTED}, errors
    return [quota_failure(e) for e in errors]


RUN_ROLES = {"alice": Role.USER, "bob": Role.ADMIN, "ops": Role.ADMIN}
RUN_QUOTAS = Quotas(default=QuotaLimits(runs=1), principals={"alice": {"runs": 2}, "ops": {}},
                    exempt=frozenset({"ops"}))


def test_deny_concurrent_create_runs_over_each_principals_runs_quota(
        tmp_path: Path, sandbox_image: str) -> None:
    """Three principals at once: alice (runs = 2) sends 6, bob (an admin, the default
    runs = 1) sends 4, ops (exempt) sends 3: exactly 2, 1 and 3 runs start."""
    with principals_serving(tmp_path, sandbox_image, RUN_ROLES, quotas=RUN_QUOTAS,
                            max_active_runs=12) as (_, clients):
        out = create_at_once(clients, {"alice": 6, "bob": 4, "ops": 3})
    assert [len(made(out[p])) for p in ("alice", "bob", "ops")] == [2, 1, 3]
    assert {r.owner for r in made(out["alice"])} == {"alice"}
    alice, bob = refusals(out["alice"]), refusals(out["bob"])
    assert {s for s, _ in alice} == {"quotas.alice.runs"} and len(alice) == 4
    assert {s for s, _ in bob} == {"quotas.bob.runs"} and len(bob) == 3
    assert "quota quotas.alice.runs exceeded: limit 2 runs, in use 2 runs, requested 1 " \
           "runs (set by quotas.principals.alice.runs)" in alice[0][1]
    assert "limit 1 runs, in use 1 runs" in bob[0][1] and "quotas.default.runs" in bob[0][1]


class CheckThenStart(RunManager):
    """The quota checked, but the place not held while the run starts: every create
    passes the check before any starts."""

    barrier = threading.Barrier(6, timeout=60)

    def _reserve(self, owner: str, stored_bytes: int = 0) -> _Place:
        place = super()._reserve(owner, stored_bytes)
        self._release(place)
        with contextlib.suppress(threading.BrokenBarrierError):
            self.barrier.wait()
        return place


class RacyServer(ControllerServer):
    def __init__(self, config: ServerConfig) -> None:
        super().__init__(config)
        self.manager = CheckThenStart(self.store, self.artifacts, self.engine,
                                      self.manager.config)


def test_sensitivity_a_quota_checked_apart_from_the_claim_lets_every_create_run(
        tmp_path: Path, sandbox_image: str) -> None:
    with principals_serving(tmp_path, sandbox_image, RUN_ROLES, factory=RacyServer,
                            quotas=RUN_QUOTAS, max_active_runs=12) as (_, clients):
        out = create_at_once(clients, {"alice": 6})
    assert len(made(out["alice"])) == 6


# Stored bytes: each run's task carries 1 MiB of its own (distinct) data.

MANIFEST = """name = "blob"
editable = "train.py"
metric = "loss"
direction = "minimize"
[train]
command = ["python3", "train.py"]
wall_seconds = 60
[knobs]
X = {low = -5.0, high = 5.0}
"""


def blob_task(_: int) -> rpb.CreateRunRequest:
    files = {"bilevel-task.toml": MANIFEST.encode(), "blob.bin": os.urandom(1 << 20),
             "train.py": b"import json\n\nX = 3.0\n\nprint(json.dumps({'loss': X * X}))\n"}
    return rpb.CreateRunRequest(task=rpb.TaskSpec(task_files=files),
                                budgets=rpb.Budgets(max_trials=1))


def test_deny_concurrent_creates_over_a_principals_stored_bytes_quota(
        tmp_path: Path, sandbox_image: str) -> None:
    """alice may store 2.5 MiB; five creates of 1 MiB tasks at once store two. bob, at
    the same time, has no such quota."""
    limit = (5 << 20) // 2
    quotas = Quotas(principals={"alice": {"stored_bytes": limit}})
    roles = {"alice": Role.USER, "bob": Role.USER}
    with principals_serving(tmp_path, sandbox_image, roles, quotas=quotas,
                            max_active_runs=10) as (server, clients):
        out = create_at_once(clients, {"alice": 5, "bob": 2}, blob_task)
        assert server.server is not None
        stored = server.server.manager.run_quotas.stored_bytes("alice")
    assert len(made(out["alice"])) == 2 and len(made(out["bob"])) == 2
    refused = refusals(out["alice"])
    assert {s for s, _ in refused} == {"quotas.alice.stored_bytes"} and len(refused) == 3
    assert f"limit {limit} bytes, in use " in refused[0][1]
    requested = re.search(r"requested (\d+) bytes", refused[0][1])
    assert requested and int(requested.group(1)) > 1 << 20  # the whole bundle counts
    assert 2 << 20 < stored <= limit


# LLM tokens per day, against the fake LLM server.


def llm_run(base_url: str, usd_per_mtok: float | None = None) -> rpb.CreateRunRequest:
    return rpb.CreateRunRequest(
        task=rpb.TaskSpec(preset="surrogate", in_process=True),
        proposer=rpb.ProposerSettings(kind=rpb.PROPOSER_KIND_LLM),
        llm=rpb.LlmSettings(provider="openai", model="fake-chat", base_url=base_url,
                            max_tokens=256, price_input_usd_per_mtok=usd_per_mtok,
                            price_output_usd_per_mtok=usd_per_mtok),
        budgets=rpb.Budgets(max_trials=100000))


def get(stubs: Stubs, run_id: str) -> rpb.Run:
    run: rpb.Run = stubs.runs.GetRun(rpb.GetRunRequest(run_id=run_id),
                                     metadata=stubs.metadata, timeout=30)
    return run


def test_deny_llm_calls_over_a_principals_daily_token_and_usd_quotas(
        tmp_path: Path, sandbox_image: str) -> None:
    """alice may use 3000 tokens a day: her two runs, calling at the same time, pause
    naming the quota with 3000 or fewer used between them. carol may spend $0.01 a day
    (at $5 per million tokens): her run pauses at it. bob has no quota and goes past
    both."""
    quotas = Quotas(principals={"alice": {"llm_tokens_per_day": 3000},
                                "carol": {"llm_usd_per_day": 0.01}})
    roles = {"alice": Role.USER, "bob": Role.USER, "carol": Role.USER}
    with FakeLLMServer(responder=random_params_responder()) as fake:
        access = LLMAccess(allowed_base_urls=(fake.openai_url,))
        with principals_serving(tmp_path, sandbox_image, roles, quotas=quotas, llm=access,
                                max_active_runs=4) as (_, c):
            who = [c["alice"], c["alice"], c["carol"], c["bob"]]
            bodies = [llm_run(fake.openai_url, 5.0 if s is c["carol"] else None)
                      for s in who]
            with ThreadPoolExecutor(4) as pool:
                runs = list(pool.map(lambda s, b: s.runs.CreateRun(
                    b, metadata=s.metadata, timeout=120), who, bodies))
            until(lambda: all(get(s, r.id).state == rpb.RUN_STATE_PAUSED
                              for s, r in zip(who[:3], runs[:3], strict=True)),
                  what="alice's and carol's runs to pause")
            until(lambda: get(c["bob"], runs[3].id).llm_tokens_used > 3000, what="bob")
            assert get(c["bob"], runs[3].id).state == rpb.RUN_STATE_RUNNING
            c["bob"].runs.CancelRun(rpb.CancelRunRequest(run_id=runs[3].id),
                                    metadata=c["bob"].metadata, timeout=120)
            alice = [get(c["alice"], r.id) for r in runs[:2]]
            carol = get(c["carol"], runs[2].id)
    assert sum(r.llm_tokens_used for r in alice) <= 3000
    for run in alice:
        assert "quota quotas.alice.llm_tokens_per_day exceeded: limit 3000 tokens, in use " \
               in run.stop_reason, run.stop_reason
        assert "bilevel resume RUN" in run.stop_reason
    assert 0 < carol.llm_cost_usd <= 0.01
    assert "quota quotas.carol.llm_usd_per_day exceeded: limit 0.01 USD, in use " \
           in carol.stop_reason, carol.stop_reason


# GPU slots: this host has no GPU, so the job's container is stood in for by a job that
# holds its slot until cancelled; the slots, their grants and the API are real.


class HeldGpuJob:
    """Stands in for the Docker backend's DockerJob: reports started, holds the GPU slot
    it was given until its call is cancelled."""

    seen: ClassVar[list[tuple[str, ...]]] = []

    def __init__(self, _engine: Any, spec: JobSpec, _image: str, _labels: Any, _grace: Any,
                 _on_output: Any, on_started: Callable[[], None] | None,
                 cancel: threading.Event | None, _warm: Any = None) -> None:
        self.spec, self.on_started, self.cancel = spec, on_started, cancel

    def run(self) -> JobResult:
        HeldGpuJob.seen.append(self.spec.gpu_ids)
        if self.on_started is not None:
            self.on_started()
        assert self.cancel is not None
        self.cancel.wait(120)
        return JobResult(status=Status.KILLED, exit_code=None, detail="cancelled")


def test_a_principal_at_its_gpu_slot_quota_waits_while_another_uses_free_gpus(
        tmp_path: Path, sandbox_image: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """3 GPU slots; alice may hold 1 (quotas.principals.alice.gpu_slots): her second
    GPU job waits with 2 GPU slots free, bob's two start at once on them."""
    monkeypatch.setattr(executor_module, "DockerJob", HeldGpuJob)
    HeldGpuJob.seen = []
    gpus = ExecutorConfig(image=sandbox_image, slots=3, runtime="runc",
                          namespace=f"pytest-quota-{uuid.uuid4().hex[:8]}",
                          gpu_slots=(("0",), ("1",), ("2",)))
    quotas = Quotas(principals={"alice": {"gpu_slots": 1}})
    roles = {"alice": Role.USER, "bob": Role.USER}
    with principals_serving(tmp_path, sandbox_image, roles, quotas=quotas,
                            executor=gpus) as (server, clients):
        slots = slots_of(server)
        first, second = Job(clients, "alice"), Job(clients, "alice")
        jobs = [first, second]
        try:
            until(lambda: slots.waiting() == {"alice": 1}, what="alice's second queued")
            jobs += [Job(clients, "bob"), Job(clients, "bob")]
            until(lambda: sum(j.started for j in jobs) == 3, what="bob's jobs")
            assert slots.holding() == {"alice": (1, 1), "bob": (2, 2)}
            assert slots.waiting() == {"alice": 1}
            (first if first.started else second).cancel()
            until(lambda: first.started and second.started, what="alice's second")
            assert slots.holding() == {"alice": (1, 1), "bob": (2, 2)}
        finally:
            for job in jobs:
                job.cancel()
    assert sorted(HeldGpuJob.seen[:3]) == [("0",), ("1",), ("2",)]
