"""Drives an ablation through the controller's gRPC API, the path `bilevel run` uses,
so every run is an ordinary, resumable run of the controller.

Resuming: a cell whose run finished is never redone; a cell whose run stopped before its
end (paused, or left running by a killed driver) is resumed with ResumeRun - the
in-process controller continues no run by itself - and waited for; only cells with no
run are created. The JSON file is rewritten after every change (ablation.py).

The runs are the caller's (CreateRun makes them its principal's): the ablation records
that principal when it starts, and only that principal drives it on, since another
would see none of its runs.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from pathlib import Path

import grpc

from controller.analysis import ablation
from controller.analysis.ablation import AblationSpec, Arm, ArmUnavailable, Cell
from controller.api.client import Client
from controller.api.errors import describe
from controller.api.gen.bilevel.v1 import principals_pb2 as ppb
from controller.api.gen.bilevel.v1 import runs_pb2 as rpb
from controller.config import ConfigError

POLL_SECONDS = 0.5
TERMINAL = {rpb.RUN_STATE_SUCCEEDED: "succeeded", rpb.RUN_STATE_FAILED: "failed",
            rpb.RUN_STATE_CANCELLED: "cancelled"}
Say = Callable[[str], None]


class AblationStalled(Exception):
    """Runs paused (their LLM failed for good) or could not be created."""


def state_name(state: int) -> str:
    return str(rpb.RunState.Name(state)).removeprefix("RUN_STATE_").lower()


class Runner:
    def __init__(self, client: Client, state_dir: Path, spec: AblationSpec, parallel: int,
                 say: Say) -> None:
        self.client = client
        self.state_dir = state_dir
        self.spec = spec
        self.parallel = max(1, parallel)
        self.say = say

    def _save(self) -> None:
        ablation.save(self.state_dir, self.spec)

    async def run(self) -> None:
        """Search cells, then re-evaluations; raises AblationStalled, or ConfigError
        when the caller is not the ablation's principal."""
        await self._claim()
        jobs = [(f"{arm.name}/{r}", _search_maker(self.spec, arm, r))
                for r in range(self.spec.repeats) for arm in self.spec.arms]
        await self._drive(self.spec.cells, jobs, "search")
        await self._reevaluate()
        self.spec.finished_at = self.spec.finished_at or time.time()
        self._save()

    async def _claim(self) -> None:
        """Record the calling principal on a new ablation; refuse any other on resume."""
        me = await self.client.principals.WhoAmI(ppb.WhoAmIRequest(),
                                                 metadata=self.client.metadata)
        if not self.spec.principal:
            self.spec.principal = me.name
            self._save()
        elif self.spec.principal != me.name:
            raise ConfigError(f"ablation {self.spec.id} belongs to principal "
                              f"{self.spec.principal!r}, whose runs it holds; you are "
                              f"{me.name!r}: resume it with {self.spec.principal}'s token")

    async def _drive(self, cells: dict[str, Cell],
                     jobs: list[tuple[str, Callable[[], rpb.CreateRunRequest]]],
                     phase: str) -> None:
        todo = [(key, make) for key, make in jobs
                if cells.get(key, Cell()).state not in TERMINAL.values()]
        active: dict[str, str] = {}  # key -> run id
        for key, _ in todo:
            cell = cells.get(key)
            if cell is not None and cell.run_id:
                active[key] = cell.run_id
                await self._continue(key, cell.run_id)
        waiting = [(k, m) for k, m in todo if k not in active]
        done = len(jobs) - len(todo)
        if done:
            self.say(f"{phase}: {done} of {len(jobs)} runs already finished; not redone")
        paused: list[str] = []
        started, finished_here = time.monotonic(), 0
        while active or waiting:
            while waiting and len(active) < self.parallel:
                key, make = waiting[0]
                try:
                    run = await self.client.runs.CreateRun(make(), metadata=self.client.metadata)
                except grpc.aio.AioRpcError as exc:
                    if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and active:
                        break  # the controller's run limit: wait for one to finish
                    raise AblationStalled(f"{key}: {describe(exc)}") from None
                waiting.pop(0)
                cells[key] = Cell(run_id=run.id, state="running")
                active[key] = run.id
                self._save()
            await asyncio.sleep(POLL_SECONDS)
            for key, run_id in list(active.items()):
                run = await self.client.runs.GetRun(rpb.GetRunRequest(run_id=run_id),
                                                    metadata=self.client.metadata)
                if run.state in TERMINAL:
                    cells[key] = self._finished(cells[key], run, phase != "search")
                    del active[key]
                    done += 1
                    finished_here += 1
                    self._save()
                    self.say(progress_line(phase, done, len(jobs), key, run,
                                           time.monotonic() - started, finished_here))
                elif run.state == rpb.RUN_STATE_PAUSED:
                    del active[key]
                    paused.append(f"{key} ({run_id}: {run.stop_reason})")
        if paused:
            raise AblationStalled("runs paused: " + "; ".join(paused) + ". Fix the cause, "
                                  f"then `bilevel ablate --resume {self.spec.id}` continues "
                                  "them")

    async def _continue(self, key: str, run_id: str) -> None:
        """Resume a cell's run that an earlier driver left paused or interrupted; one
        that runs already (in a `bilevel serve`) or has finished is left as it is."""
        try:
            await self.client.runs.ResumeRun(rpb.ResumeRunRequest(run_id=run_id),
                                             metadata=self.client.metadata)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.FAILED_PRECONDITION:
                raise AblationStalled(f"{key}: {describe(exc)}") from None
            return
        self.say(f"{key}: resumed run {run_id}")

    @staticmethod
    def _finished(cell: Cell, run: rpb.Run, reevaluation: bool) -> Cell:
        cell.state = TERMINAL[run.state]
        if not reevaluation:
            return cell
        if run.HasField("baseline_loss"):
            cell.value = run.baseline_loss  # for a re-evaluation: the fresh-seed mean
        if run.HasField("noise_sigma"):
            cell.sigma = run.noise_sigma
        return cell

    async def _best_source(self, run_id: str) -> str:
        art = await self.client.runs.GetArtifact(
            rpb.GetArtifactRequest(run_id=run_id, name="best/train.py"),
            metadata=self.client.metadata)
        return bytes(art.content).decode()

    async def _baseline_source(self, run_id: str) -> str:
        art = await self.client.runs.GetArtifact(
            rpb.GetArtifactRequest(run_id=run_id, name="trials/0/train.py"),
            metadata=self.client.metadata)
        return bytes(art.content).decode()

    async def _reevaluate(self) -> None:
        """Each repeat's baseline and each cell's final best on the repeat's fresh seeds.
        The same source on the same seeds gives the same values, so a best that is the
        baseline (no improvement) reuses the baseline's re-evaluation."""
        spec = self.spec
        jobs: list[tuple[str, Callable[[], rpb.CreateRunRequest]]] = []
        copies: list[tuple[str, str]] = []  # (key, key of the identical evaluation)
        for r in range(spec.repeats):
            finished = [(a.name, spec.cells[f"{a.name}/{r}"]) for a in spec.arms
                        if spec.cells.get(f"{a.name}/{r}", Cell()).state == "succeeded"]
            if not finished:
                continue
            base = await self._baseline_source(finished[0][1].run_id)
            seen = {_sha(base): f"baseline/{r}"}
            jobs.append((f"baseline/{r}", _maker(spec, base, r)))
            spec.reeval.setdefault(f"baseline/{r}", Cell()).source_sha = _sha(base)
            for name, cell in finished:
                source = await self._best_source(cell.run_id)
                key, sha = f"{name}/{r}", _sha(source)
                if sha in seen:
                    copies.append((key, seen[sha]))
                    continue
                seen[sha] = key
                spec.reeval.setdefault(key, Cell()).source_sha = sha
                jobs.append((key, _maker(spec, source, r)))
        await self._drive(spec.reeval, jobs, "re-evaluation")
        for key, same in copies:
            src = spec.reeval[same]
            spec.reeval[key] = Cell(src.run_id, src.state, src.value, src.sigma, src.source_sha)
        self._save()


def _clock(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def progress_line(phase: str, done: int, total: int, key: str, run: rpb.Run,
                  elapsed: float, finished_here: int) -> str:
    """One line per finished run: phase, count, arm and repeat, the outcome in short,
    and the ETA of the phase (from this session's pace)."""
    arm, _, repeat = key.rpartition("/")
    outcome = TERMINAL.get(run.state, state_name(run.state))
    if phase == "search" and run.HasField("best_loss") and run.HasField("baseline_loss"):
        outcome += f", best - baseline in search {run.best_loss - run.baseline_loss:+.2e}"
    elif phase != "search" and run.HasField("baseline_loss"):
        outcome += f", mean on fresh seeds {run.baseline_loss:.6f}"
    left = total - done
    eta = _clock(elapsed / finished_here * left) if finished_here and left else "0s"
    return (f"[{phase} {done}/{total}] arm {arm} repeat {repeat}: {outcome} "
            f"({_clock(elapsed)} elapsed, ETA {eta})")


def _sha(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()[:16]


def _search_maker(spec: AblationSpec, arm: Arm,
                  repeat: int) -> Callable[[], rpb.CreateRunRequest]:
    return lambda: ablation.run_request(spec, arm, repeat)


def _maker(spec: AblationSpec, source: str, repeat: int) -> Callable[[], rpb.CreateRunRequest]:
    return lambda: ablation.reeval_request(spec, source, repeat)


def plan(spec: AblationSpec, requested: list[str], llm: bool, say: Say) -> None:
    """Fill in the arms: those requested that this controller and configuration can
    run; the others are recorded in `skipped` with the reason, and said aloud."""
    arms, skipped = ablation.catalogue(llm, spec.schedule_batch)
    for name in requested:
        if name in ablation.RENAMED_ARMS:
            raise ValueError(ablation.RENAMED_ARMS[name])
        if name not in arms:
            raise ValueError(f"unknown arm {name!r}; choose from {', '.join(arms)}")
        if name in skipped:
            spec.skipped[name] = skipped[name]
            continue
        try:
            ablation.run_request(spec, arms[name], 0)
        except ArmUnavailable as exc:
            spec.skipped[name] = str(exc)
            continue
        spec.arms.append(arms[name])
    for name, why in spec.skipped.items():
        say(f"arm {name} skipped: {why}")
    if not spec.arms:
        raise ValueError("no arm can run: " + "; ".join(spec.skipped.values()))
