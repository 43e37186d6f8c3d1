"""The sandbox backend protocol: the one seam between the research code (and the API)
and whatever runs sandbox jobs.

A backend takes a `JobSpec` and returns a `JobResult` (spec.py), opens interactive
mechanism sessions, holds the data that jobs mount and the task images they run in, and
removes what no run needs any more. Callers see only this protocol, never an engine
object: a data mount names a backend data reference (`DataMount.source`, handed out by
`ensure_data` or `resolve_data`), an image is a tag the backend allowed.

Implementations: the local Docker engine (executor.py, `DockerExecutor`) and a Ray
cluster (ray_backend.py, `RayExecutor`); factory.py builds the configured one. A
backend for another cluster engine (docs/kubernetes-backend.md) implements the same
methods.

Failures of the backend itself raise `SandboxUnavailable` (nothing ran) or
`SandboxBusy` (no slot within the caller's wait); an invalid spec raises `SpecError`.
Everything a job does, including failing, is a `JobResult`.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from controller.principals import Principal
from controller.sandbox.spec import JobResult, JobSpec, SpecError

if TYPE_CHECKING:
    from controller.sandbox.cores import CoreGate
    from controller.sandbox.replies import Reply
    from controller.sandbox.task_image import WheelSource

OutputCallback = Callable[[str, bytes], None]  # (stream name, bytes) as the job writes
# What a request may mount: the id of data published to clients (publish_data).
DATA_ID = re.compile(r"^data-[0-9a-f]{20}$")
NOT_PUBLISHED = ("{!r} is not a data volume published to clients of this controller: give "
                 "the id (data-...) the controller handed out; engine volume names and "
                 "evaluation data cannot be mounted from a request")


def check_data_ids(spec: JobSpec) -> None:
    """A request's data_mounts name data ids; anything else is refused before any
    backend sees it (SpecError naming `data_mounts[i].volume`, the request's field)."""
    for i, mount in enumerate(spec.data_mounts):
        if not DATA_ID.match(mount.source):
            raise SpecError(f"data_mounts[{i}].volume", NOT_PUBLISHED.format(mount.source))


@dataclass
class Sweep:
    """What a clean-up removed, and what it kept and why (name -> reason)."""

    removed: list[str] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RunClaims:
    """How a run's view of a backend records, in the controller's store, each object the
    run is about to use: the claim is committed before the object is filled, tagged or
    mounted, so a clean-up never removes it from under the run. `store` names the
    controller's store on the engine (store/resources.py's store_scope)."""

    store: str
    claim_data: Callable[[str], None]  # a data reference ensure_data hands out
    claim_image: Callable[[str], None]  # a task image tag ensure_task_image hands out


@dataclass(frozen=True)
class ClaimIndex:
    """What the controller's store says about the objects runs claim
    (store/resources.py): whether a run is live (running or paused: it will run jobs
    again), whether some live run claims a data reference, whether any kept run claims a
    task image, and whether another controller's store is gone for good."""

    store: str
    run_live: Callable[[str], bool]
    data_claimed: Callable[[str], bool]
    image_claimed: Callable[[str], bool]
    store_gone: Callable[[str], bool] = lambda _store: False


class MechanismSession(Protocol):
    """A long-lived sandbox spoken to with one JSON line per call (session.py has the
    protocol's rules). Not thread-safe: one call at a time. Every failure of the sandbox
    raises `SessionDead` and ends the session; an exception the code inside reports is a
    normal `Reply` with ok=False."""

    start_seconds: float

    @property
    def alive(self) -> bool: ...

    def call(self, hook: str, args: list[Any], timeout: float) -> Reply: ...

    def stderr(self, settle_seconds: float = 0.0) -> str: ...

    def close(self) -> None: ...


class RunObjects(Protocol):
    """The objects runs claim on the backend - shared data copies and task images - and
    their removal. Each method keeps what a claim or a running job still uses (recorded in
    the sweep's `kept`) and raises SandboxUnavailable when the backend cannot be reached."""

    def release_holds(self, index: ClaimIndex, sweep: Sweep) -> None:
        """Let go of what runs that are no longer live held (a paused run still holds)."""

    def remove_data(self, name: str, index: ClaimIndex, sweep: Sweep) -> None:
        """Remove data reference `name` unless a live run claims it or a job mounts it."""

    def remove_task_image(self, tag: str, index: ClaimIndex, sweep: Sweep) -> None:
        """Remove this controller's task image `tag` unless a kept run claims it."""

    def sweep(self, index: ClaimIndex) -> Sweep:
        """Release holds, then remove every data copy and task image of this controller
        that nothing claims or uses."""

    def close(self) -> None:
        """Let go of the engine."""


class SandboxBackend(RunObjects, Protocol):
    """Where sandbox jobs run. Thread-safe. `for_owner` gives a run's (or an Execute
    caller's) view: the same slots, images and engine connections, its jobs labelled
    with the owner and counted against the principal's share of the slots."""

    image: str  # the deployment's sandbox image
    runtime: str  # the least isolation any job gets: "runsc" or "runc"
    cores: CoreGate | None  # this host's cores for time-budgeted jobs; None on a cluster

    @property
    def namespace(self) -> str:
        """The controller's namespace: what its objects are labelled with."""

    def run_job(self, spec: JobSpec, *, on_output: OutputCallback | None = None,
                on_started: Callable[[], None] | None = None,
                cancel: threading.Event | None = None,
                slot_timeout: float | None = None) -> JobResult:
        """Run one job to completion once the fair-share rule gives it a slot. Setting
        `cancel` kills it (status killed), also while it waits for a slot. Raises
        SpecError for an invalid spec, SandboxBusy when no slot frees within
        `slot_timeout`, SandboxUnavailable when the backend cannot run jobs."""

    def open_session(self, spec: JobSpec) -> MechanismSession:
        """Start `spec` as an interactive session; SandboxUnavailable if it cannot."""

    def ensure_data(self, stem: str, source: Path) -> str:
        """A data reference holding a copy of folder `source` (`stem`: its kind and
        content hash, so one copy per content), claimed for this view's run first."""

    def publish_data(self, source: Path, principal: str) -> str:
        """Copy `source` into data that API clients of `principal` (and admins) may
        mount; returns its id (data-...), issued once the copy is complete."""

    def resolve_data(self, spec: JobSpec, principal: Principal) -> JobSpec:
        """A request's `spec` with each data id replaced by its data reference; SpecError
        naming `data_mounts[i].volume` for anything that is not an id published to
        `principal`. Nothing else, no evaluation split and no engine name, is mountable
        from a request."""

    def ensure_task_image(self, requirements: Sequence[str],
                          wheels: WheelSource | None = None) -> str:
        """The image tag of the sandbox image with `requirements` installed (built once),
        claimed for this view's run and allowed. Raises ImageBuildError, or ValueError
        for a bad requirement."""

    def allow_image(self, tag: str) -> None:
        """Let jobs run in `tag`, an image this controller built; a request never names
        an image."""

    def for_owner(self, owner: str, *, principal: str | None = None,
                  claims: RunClaims | None = None) -> SandboxBackend:
        """This backend as `owner` (a run id) of `principal` uses it; with `claims`,
        each data reference and task image the view hands out is claimed first."""

    def reap(self) -> int:
        """Remove this namespace's orphans (jobs and sessions whose controller is gone or
        whose deadline long passed); returns how many objects went."""

    def close(self) -> None:
        """Stop background work and let go of the engine (a view leaves them open)."""
