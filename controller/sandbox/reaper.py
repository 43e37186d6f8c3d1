"""Find and remove sandbox containers and volumes nobody owns any more.

Every object the executor creates carries labels: the namespace (one per deployment),
its owner (host, pid and process start time of the controller) and a deadline. An
object is an orphan when its owner process on this host is gone, or when its deadline
has long passed (an owner on another host, or a stuck job). A SIGKILLed controller's
containers are therefore removed by the next controller's start-up sweep.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass

import docker
import docker.errors
import structlog

log = structlog.get_logger(__name__)

LABEL_MANAGED = "io.bilevel.managed"
LABEL_NAMESPACE = "io.bilevel.namespace"
LABEL_OWNER = "io.bilevel.owner"
LABEL_DEADLINE = "io.bilevel.deadline"
DEADLINE_GRACE_SECONDS = 300.0


def _process_start_ticks(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            return handle.read().rsplit(")", 1)[1].split()[19]
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


def ownership_labels(namespace: str, deadline: float) -> dict[str, str]:
    return {
        LABEL_MANAGED: "1",
        LABEL_NAMESPACE: namespace,
        LABEL_OWNER: this_owner(),
        LABEL_DEADLINE: f"{deadline:.0f}",
    }


def is_orphan(labels: dict[str, str], now: float) -> bool:
    alive = owner_alive(labels.get(LABEL_OWNER, ""))
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


def reap(client: docker.DockerClient, namespace: str) -> ReapReport:
    """Remove this namespace's orphaned containers, then their volumes."""
    report = ReapReport()
    selector = [f"{LABEL_MANAGED}=1", f"{LABEL_NAMESPACE}={namespace}"]
    now = time.time()
    for container in client.containers.list(all=True, filters={"label": selector}):
        if is_orphan(container.labels, now):
            try:
                container.remove(force=True)
                report.containers += 1
            except docker.errors.NotFound:
                pass
    for volume in client.volumes.list(filters={"label": selector}):
        labels = volume.attrs.get("Labels") or {}
        if is_orphan(labels, now):
            try:
                volume.remove(force=True)
                report.volumes += 1
            except (docker.errors.NotFound, docker.errors.APIError):
                pass  # still in use by a container that is being removed
    if report.containers or report.volumes:
        log.info("reaped orphans", namespace=namespace, containers=report.containers,
                 volumes=report.volumes)
    return report
