"""What the backends here share: images allowed, the runtime floor, slots shared fairly
between principals (fair_share.py), and per-owner views.

A backend subclass says how a job that holds a slot runs (`_run_held`) and what it
checks first (`_admit`); `run_job` is the same for all of them.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Self

from controller.principals import SHARED
from controller.quotas import Quotas
from controller.sandbox.backend import OutputCallback, RunClaims
from controller.sandbox.backend_config import ExecutorConfig, SandboxBusy
from controller.sandbox.fair_share import FairShare
from controller.sandbox.reaper import OWNER_EXECUTE
from controller.sandbox.spec import JobResult, JobSpec, SpecError, Status


class SlottedBackend:
    """Thread-safe: at most `slots.slots` jobs run at once, the slots shared fairly
    between principals within their quotas."""

    image: str
    runtime: str

    def __init__(self, config: ExecutorConfig, quotas: Quotas, slots: FairShare) -> None:
        self.config = config
        self.quotas = quotas
        self.slots = slots
        self._allowed: set[str] = set(config.allowed_images)
        # io.bilevel.owner of the jobs, and the principal whose slots they take;
        # for_owner() makes a run's (or an Execute caller's) view.
        self.owner = OWNER_EXECUTE
        self.principal = SHARED.name
        self.claims: RunClaims | None = None
        self._view = False  # a view shares the engine connections of the backend it came from

    @property
    def namespace(self) -> str:
        return self.config.namespace

    def allow_image(self, tag: str) -> None:
        """Let jobs run in `tag`: an image this controller built on its own sandbox image
        (task_image.py). Only trusted code calls this; a request never names an image."""
        self._allowed.add(tag)

    def allowed(self, image: str) -> bool:
        return image == self.image or image in self._allowed

    def for_owner(self, owner: str, *, principal: str | None = None,
                  claims: RunClaims | None = None) -> Self:
        """This backend as `owner` (a run id) of `principal` uses it: the same engine,
        slots and images, its jobs and sessions labelled with the owner, its jobs taking
        the principal's share of the slots, and each object it hands out claimed by
        `claims` first."""
        view = copy.copy(self)
        view.owner, view.claims = owner, claims
        view.principal = principal or self.principal
        view._view = True
        return view

    def run_job(self, spec: JobSpec, *, on_output: OutputCallback | None = None,
                on_started: Callable[[], None] | None = None,
                cancel: threading.Event | None = None,
                slot_timeout: float | None = None) -> JobResult:
        """Run one job to completion, once the fair-share rule gives it a slot. Raises
        SpecError for an invalid spec, SandboxBusy when no slot frees within
        `slot_timeout`; every other outcome is a JobResult (status killed when `cancel`
        is set while it waits)."""
        spec, image = self._checked(spec)
        grant = self.slots.acquire(self.principal, gpus=1 if self.slots.gpu_slots else 0,
                                   timeout=slot_timeout, cancel=cancel)
        if grant is None:
            if cancel is not None and cancel.is_set():
                return JobResult(status=Status.KILLED, exit_code=None,
                                 detail="cancelled while waiting for a sandbox slot")
            raise SandboxBusy("all sandbox slots are busy")
        try:
            return self._run_held(spec, image, on_output, on_started, cancel)
        finally:
            self.slots.release(grant)

    def _checked(self, spec: JobSpec) -> tuple[JobSpec, str]:
        """A valid spec under the runtime floor, and its allowed image; raises SpecError
        (and the backend's own refusals, `_admit`)."""
        spec.validate()
        image = spec.image or self.image
        if not self.allowed(image):
            raise SpecError("image", f"{image!r} is not an allowed sandbox image")
        if self.runtime == "runsc" and spec.runtime != "runsc":
            spec = replace(spec, runtime="runsc")
        self._admit(spec, image)
        return spec, image

    def _admit(self, spec: JobSpec, image: str) -> None:
        """The backend's own checks of a valid spec (SpecError, SandboxUnavailable)."""

    def _run_held(self, spec: JobSpec, image: str, on_output: OutputCallback | None,
                  on_started: Callable[[], None] | None,
                  cancel: threading.Event | None) -> JobResult:
        raise NotImplementedError
