"""Find and remove sandbox containers and volumes nobody owns any more.

Every object a controller creates on the engine carries the namespace (one per
controller) and its owner (`io.bilevel.owner`: the run id, or "execute" for an Execute
call, "published" for a data volume handed to clients, "runs" for a data volume the
namespace's runs share). A job's objects (`io.bilevel.managed`) also carry the
controller process that must clean them up (host, pid and process start time) and a
deadline: such an object is an orphan when that process on this host is gone, or when
its deadline has long passed (a controller on another host, or a stuck job). A
SIGKILLed controller's containers are therefore removed by the next controller's
start-up sweep. Shared data volumes are not job objects: the runs that use them are
counted in the store (controller/sandbox/volumes.py).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import docker
import docker.errors
import structlog

log = structlog.get_logger(__name__)

LABEL_MANAGED = "io.bilevel.managed"
LABEL_NAMESPACE = "io.bilevel.namespace"
LABEL_OWNER = "io.bilevel.owner"
LABEL_CONTROLLER = "io.bilevel.controller"
LABEL_DEADLINE = "io.bilevel.deadline"
LABEL_PRINCIPAL = "io.bilevel.principal"  # whose job it is (a run's owner, a caller)
DEADLINE_GRACE_SECONDS = 300.0
OWNER_EXECUTE = "execute"  # a job of an Execute call, or of no run
OWNER_PUBLISHED = "published"  # a data volume published to API clients
OWNER_RUNS = "runs"  # a data volume the namespace's runs share (counted in the store)


def _process_start_ticks(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        # A zombie has exited and only awaits its parent's wait() (a Ray worker whose
        # raylet was killed, under an init that does not reap): not a live owner.
        return None if fields[0] == "Z" else fields[19]
    except (OSError, IndexError):
        return None


def this_owner() -> str:
    """Identifies this controller process even across pid reuse."""
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_process_start_ticks(pid)}"


def owner_alive(owner: str) -> bool | None:
    """True/False for an owner on this host; None when it lives elsewhere."""
    try:
        host, pid, ticks = owner.rsplit(":", 2)
    except ValueError:
        return False
    if host != socket.gethostname():
        return None
    return pid.isdigit() and _process_start_ticks(int(pid)) == ticks


def ownership_labels(namespace: str, deadline: float,
                     owner: str = OWNER_EXECUTE) -> dict[str, str]:
    """Labels of an object this process must remove by `deadline` (a job's container
    and volume, a helper container)."""
    return {
        LABEL_MANAGED: "1",
        LABEL_NAMESPACE: namespace,
        LABEL_OWNER: owner,
        LABEL_CONTROLLER: this_owner(),
        LABEL_DEADLINE: f"{deadline:.0f}",
    }


def is_orphan(labels: dict[str, str], now: float) -> bool:
    alive = owner_alive(labels.get(LABEL_CONTROLLER, ""))
    if alive is False:
        return True
    try:
        deadline = float(labels.get(LABEL_DEADLINE, "0"))
    except ValueError:
        deadline = 0.0
    return now > deadline + DEADLINE_GRACE_SECONDS


@dataclass
class ReapReport:
    containers: int = 0
    volumes: int = 0


def reap(client: docker.DockerClient, namespace: str, *,
         skip_vanished: bool = True) -> ReapReport:
    """Remove this namespace's orphaned containers, then their volumes.

    Other controllers, jobs tearing down and people remove objects at any moment, so an
    object that is gone by the time we inspect or remove it (404, or a removal already
    in progress) is skipped: it never aborts the sweep. `skip_vanished=False` lets the
    first such error propagate instead."""
    report = ReapReport()
    selector = [f"{LABEL_MANAGED}=1", f"{LABEL_NAMESPACE}={namespace}"]
    now = time.time()
    # The low-level list carries the labels: no per-container inspect that could 404.
    for row in client.api.containers(all=True, filters={"label": selector}):
        if is_orphan(row.get("Labels") or {}, now) and _remove(
                partial(client.api.remove_container, row["Id"], force=True),
                "container", row["Id"], skip_vanished):
            report.containers += 1
    for row in client.api.volumes(filters={"label": selector}).get("Volumes") or []:
        if is_orphan(row.get("Labels") or {}, now) and _remove(
                partial(client.api.remove_volume, row["Name"], force=True),
                "volume", row["Name"], skip_vanished):
            report.volumes += 1
    if report.containers or report.volumes:
        log.info("reaped orphans", namespace=namespace, containers=report.containers,
                 volumes=report.volumes)
    return report


def _remove(remove: Callable[[], object], kind: str, name: str,
            skip_vanished: bool) -> bool:
    """True when this call removed the object; False when it was already gone or is
    still busy (a volume whose container is being removed: the next sweep gets it)."""
    if not skip_vanished:
        remove()
        return True
    try:
        remove()
        return True
    except docker.errors.NotFound:
        return False
    except docker.errors.APIError as exc:  # 409: removal in progress, or still in use
        log.debug("reaper skipped an object", kind=kind, name=name, error=str(exc))
        return False

