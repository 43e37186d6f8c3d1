"""Task images per controller: a tag each controller holds, and their removal.

task_image.py builds `bilevel-task:<hash>` once per engine. A controller's runs use it
through a tag of their own, `bilevel-task:<hash>-<namespace>-<store>` (`<store>`: a hash
of the controller's store scope, store/resources.py; an image cannot be relabelled after
its build, so the tag is the controller's mark), so one controller's clean-up removes
only its own tag and never pulls an image from under another's runs, in its namespace
or another.
When the last controller's tag goes, the build's tag goes too and the engine frees the
image, unless a container (of any namespace) still uses it: the engine answers 409,
and that controller's tag stays until a later sweep.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import docker
import docker.errors
import structlog

from controller.sandbox.backend import Sweep
from controller.sandbox.task_image import TASK_IMAGE_REPO
from controller.sandbox.volumes import named_lock, namespace_part

log = structlog.get_logger(__name__)


def _suffix(namespace: str, store: str) -> str:
    return f"-{namespace_part(namespace)}-{hashlib.sha256(store.encode()).hexdigest()[:8]}"


def namespace_tag(tag: str, namespace: str, store: str) -> str:
    """`bilevel-task:<hash>` as the controller of `namespace` and `store` names it."""
    repo, _, version = tag.rpartition(":")
    return f"{repo}:{version}{_suffix(namespace, store)}"


def build_tag(ns_tag: str) -> str:
    """The build's own tag behind a controller's tag."""
    repo, _, version = ns_tag.rpartition(":")
    return f"{repo}:{version.split('-', 1)[0]}"


def hold_task_image(client: docker.DockerClient, tag: str, namespace: str,
                    store: str) -> str:
    """Tag built image `tag` for this controller; returns its tag."""
    ns_tag = namespace_tag(tag, namespace, store)
    repo, _, version = ns_tag.rpartition(":")
    client.images.get(tag).tag(repo, version)
    return ns_tag


def release_task_image(client: docker.DockerClient, ns_tag: str,
                       claimed: Callable[[str], bool], sweep: Sweep) -> None:
    """Remove this controller's tag `ns_tag` unless `claimed(ns_tag)` (asked under the
    tag's lock). When no other controller holds the image, the build's tag goes first (a mere
    untag while `ns_tag` still names the image), then `ns_tag`, which frees the image
    unless a container uses it: then `ns_tag` stays, for a later sweep. Failures are
    logged and recorded in `sweep`, never raised."""
    with named_lock(ns_tag):
        if claimed(ns_tag):
            sweep.kept[ns_tag] = "used by a run of this controller"
            return
        try:
            tags = client.images.get(ns_tag).tags
        except docker.errors.ImageNotFound:
            return
        except docker.errors.APIError as exc:
            sweep.kept[ns_tag] = str(exc)
            return
        base = build_tag(ns_tag)
        held_elsewhere = any(t != ns_tag and t.startswith(f"{base}-") for t in tags)
        if base in tags and not held_elsewhere:
            _remove(client, base, sweep)
        _remove(client, ns_tag, sweep)


def _remove(client: docker.DockerClient, tag: str, sweep: Sweep) -> bool:
    try:
        client.images.remove(tag)
    except docker.errors.ImageNotFound:
        return True  # gone already
    except docker.errors.APIError as exc:
        why = "in use by a container" if exc.status_code == 409 else str(exc)
        log.info("task image kept; a later sweep retries", image=tag, reason=why)
        sweep.kept[tag] = why
        return False
    sweep.removed.append(tag)
    return True


def sweep_task_images(client: docker.DockerClient, namespace: str, store: str,
                      claimed: Callable[[str], bool]) -> Sweep:
    """Release every task image tag of this controller that no run claims."""
    sweep = Sweep()
    suffix = _suffix(namespace, store)
    tags = sorted({t for image in client.images.list(name=TASK_IMAGE_REPO)
                   for t in image.tags if t.startswith(f"{TASK_IMAGE_REPO}:")
                   and t.endswith(suffix) and build_tag(t) + suffix == t})
    for tag in tags:
        release_task_image(client, tag, claimed, sweep)
    return sweep
