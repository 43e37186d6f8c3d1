"""The Docker backend's data: host folders copied once into labelled, read-only volumes.

Volumes (not bind mounts) keep jobs independent of the controller's filesystem, which
matters when the controller itself runs in a container. A volume's name is the data
reference a JobSpec's `DataMount.source` names.

Two kinds: trusted code (a task's data folders, the trainer's train and validation
splits) gets a reference from the backend's `ensure_data`; an API client can mount only
a volume published for clients (`publish_data_volume`), by the id it was handed, only
in the controller namespace that published it, and only as the principal it was
published for or an admin (`resolve_data_mounts`): to anyone else the id is unknown.
Nothing else, in particular no evaluation split and no other Docker volume, is
mountable from a request.

A run's data volume (`data_volume`) belongs to the controller's namespace: its name
holds the namespace and its content's hash (`bilevel-<namespace>-<stem>`), so two
controllers in two namespaces never share one, and the namespace's runs share it (owner
label "runs"). A run claims it before it is filled or mounted (the executor's claim:
the claim is recorded in the store, and a holder - a never-started container that
mounts the volume, labelled with the run and the controller's store - is created). A
volume that any container mounts, a holder or a job of any controller, is one the
engine refuses to remove (409): so a clean-up, even by another controller sharing the
namespace, never pulls a volume from under a run that will mount it again.
`sweep_data_volumes` removes this store's holders of runs that are no longer running or
paused, then every volume of the namespace that nothing holds. Filling, claiming and
removing one name are serialised in this process (`named_lock`); a 409 is skipped and
retried by the next sweep, and nothing is removed on the way to a job: a half-filled
volume (a fill cut short) is filled again in place.
"""

from __future__ import annotations

import hashlib
import io
import re
import tarfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import docker
import docker.errors
import structlog

from controller.principals import SHARED, Principal
from controller.sandbox.backend import DATA_ID, NOT_PUBLISHED, Sweep, check_data_ids
from controller.sandbox.hardening import SANDBOX_UID
from controller.sandbox.reaper import (
    LABEL_NAMESPACE,
    LABEL_OWNER,
    LABEL_PRINCIPAL,
    OWNER_EXECUTE,
    OWNER_PUBLISHED,
    OWNER_RUNS,
    ownership_labels,
)
from controller.sandbox.spec import DataMount, JobSpec, SpecError

log = structlog.get_logger(__name__)

LABEL_DATA = "io.bilevel.data"
LABEL_DATA_ID = "io.bilevel.data.id"
LABEL_MOUNTABLE = "io.bilevel.data.mountable"  # "1" only on volumes published for clients
LABEL_HOLDS = "io.bilevel.data.holds"  # on a holder container: the volume it holds
LABEL_STORE = "io.bilevel.store"  # on a holder: the controller store whose run it holds for
_FILL_TARGET = "/fill"
_COMPLETE_MARK = ".bilevel-complete"
HELPER_SECONDS = 3600.0  # a fill or probe container left longer than this is an orphan
_PLAIN_NAMESPACE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,39}$")
_LOCKS: dict[str, threading.RLock] = {}
_LOCKS_GUARD = threading.Lock()


def named_lock(name: str) -> threading.RLock:
    """The lock of one engine object name in this process (fill, claim, removal)."""
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(name, threading.RLock())


def namespace_part(namespace: str) -> str:
    """The namespace as it appears in a Docker object name: itself when it is a plain
    name, else a hash of it (never two namespaces under one name)."""
    if _PLAIN_NAMESPACE.match(namespace):
        return namespace
    return "ns" + hashlib.sha256(namespace.encode()).hexdigest()[:16]


def data_volume_name(namespace: str, stem: str) -> str:
    return f"bilevel-{namespace_part(namespace)}-{stem}"


def shared_labels(namespace: str) -> dict[str, str]:
    """Labels of a data volume the namespace's runs share."""
    return {LABEL_DATA: "1", LABEL_MOUNTABLE: "0", LABEL_NAMESPACE: namespace,
            LABEL_OWNER: OWNER_RUNS}


def data_volume(client: docker.DockerClient, namespace: str, stem: str, source: Path,
                image: str, claim: Callable[[str], None]) -> str:
    """The Docker name of `namespace`'s volume holding `source` (`stem`: its kind and
    content hash), claimed (`claim(name)`), then filled unless a complete copy exists."""
    name = data_volume_name(namespace, stem)
    labels = shared_labels(namespace)
    with named_lock(name):  # a sweep re-checks the claims under the same lock
        client.volumes.create(name=name, labels=labels)  # an existing one stays
        claim(name)
        return ensure_data_volume(client, name, source, image, labels)


def hold_data_volume(client: docker.DockerClient, name: str, image: str, namespace: str,
                     owner: str, store: str) -> None:
    """Make run `owner` of controller store `store` a holder of volume `name`: a
    never-started container mounting it (one per run, volume and store)."""
    key = hashlib.sha256(f"{store}\0{owner}\0{name}".encode()).hexdigest()[:20]
    try:
        client.containers.create(
            image, command=["true"], name=f"bilevel-hold-{key}", network_disabled=True,
            labels={LABEL_DATA: "1", LABEL_NAMESPACE: namespace, LABEL_OWNER: owner,
                    LABEL_HOLDS: name, LABEL_STORE: store},
            mounts=[docker.types.Mount(target=_FILL_TARGET, source=name, type="volume")])
    except docker.errors.APIError as exc:
        if exc.status_code != 409:  # 409: the name is taken, so the hold exists already
            raise


def release_holds(client: docker.DockerClient, namespace: str, store: str,
                  live: Callable[[str], bool], sweep: Sweep,
                  store_gone: Callable[[str], bool] = lambda _store: False) -> None:
    """Remove the holders store `store` made for runs that `live(run_id)` no longer
    says are running or paused, and those of another store that `store_gone` says no
    longer exists (its state dir was removed). No other holder is touched."""
    selector = [f"{LABEL_NAMESPACE}={namespace}", LABEL_HOLDS]
    for row in client.api.containers(all=True, filters={"label": selector}):
        labels = row.get("Labels") or {}
        owner, holder_store = labels.get(LABEL_OWNER, ""), labels.get(LABEL_STORE, "")
        if labels.get(LABEL_NAMESPACE) != namespace or (
                live(owner) if holder_store == store else not store_gone(holder_store)):
            continue
        with named_lock(labels.get(LABEL_HOLDS, "")):
            if holder_store == store and live(owner):
                continue
            try:
                client.api.remove_container(row["Id"], force=True)
            except docker.errors.NotFound:
                continue
            except docker.errors.APIError as exc:
                sweep.kept[f"holder of {labels.get(LABEL_HOLDS)}"] = str(exc)


def _tar_of(source: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in sorted(source.rglob("*")):
            if path.is_symlink():
                continue
            info = tar.gettarinfo(str(path), arcname=str(path.relative_to(source)))
            info.uid = info.gid = SANDBOX_UID
            info.mode = 0o755 if path.is_dir() else 0o644
            if path.is_dir():
                tar.addfile(info)
            else:
                with path.open("rb") as handle:
                    tar.addfile(info, handle)
        mark = tarfile.TarInfo(_COMPLETE_MARK)
        tar.addfile(mark, io.BytesIO(b""))
    return buffer.getvalue()


def ensure_data_volume(client: docker.DockerClient, name: str, source: Path,
                       image: str, labels: dict[str, str] | None = None) -> str:
    """Volume `name` holding a copy of `source`: created with `labels` if missing,
    filled unless complete. Never removes anything: a volume some job still mounts stays.

    A throwaway container (never started) from the sandbox image is the copy target;
    the completion mark is written last so a half-filled volume is filled again."""
    labels = labels or {LABEL_DATA: "1", LABEL_MOUNTABLE: "0"}
    with named_lock(name):
        try:
            client.volumes.get(name)
        except docker.errors.NotFound:
            client.volumes.create(name=name, labels=labels)  # someone else's: theirs
        else:
            if _is_complete(client, name, image, labels):
                return name
        _fill(client, name, source, image, labels)
    return name


def publish_data_volume(client: docker.DockerClient, namespace: str, source: Path,
                        image: str, principal: str) -> str:
    """Copy `source` into a new volume that principal `principal` (and admins) may mount
    as an API client of controller namespace `namespace`; returns its id (what
    ExecuteRequest.data_mounts[].volume names). The id is issued only once the copy is
    complete."""
    data_id = f"data-{uuid.uuid4().hex[:20]}"
    labels = {LABEL_DATA: "1", LABEL_DATA_ID: data_id, LABEL_MOUNTABLE: "1",
              LABEL_NAMESPACE: namespace, LABEL_OWNER: OWNER_PUBLISHED,
              LABEL_PRINCIPAL: principal}
    client.volumes.create(name=f"bilevel-{data_id}", labels=labels)
    _fill(client, f"bilevel-{data_id}", source, image, labels)
    return data_id


def mountable_volume(client: docker.DockerClient, namespace: str, data_id: str,
                     principal: Principal) -> str | None:
    """The Docker name of the client-mountable volume `data_id` of `namespace` that
    `principal` sees (published for it, or it is an admin; a volume published before
    principals is "shared"'s), or None."""
    if not DATA_ID.match(data_id):
        return None
    rows = client.api.volumes(filters={"label": [
        f"{LABEL_DATA_ID}={data_id}", f"{LABEL_MOUNTABLE}=1",
        f"{LABEL_NAMESPACE}={namespace}"]}).get("Volumes") or []
    want = {LABEL_DATA: "1", LABEL_DATA_ID: data_id, LABEL_MOUNTABLE: "1",
            LABEL_NAMESPACE: namespace}
    names = [row["Name"] for row in rows
             if all((row.get("Labels") or {}).get(k) == v for k, v in want.items())
             and principal.sees((row.get("Labels") or {}).get(LABEL_PRINCIPAL, SHARED.name))]
    return names[0] if len(names) == 1 else None


def resolve_data_mounts(client: docker.DockerClient, namespace: str, spec: JobSpec,
                        principal: Principal) -> JobSpec:
    """`spec` from `principal`'s request with each data id replaced by its volume's
    Docker name; SpecError naming `data_mounts[i].volume` for an id this namespace did
    not publish for that principal (the same error as for an id nobody published)."""
    check_data_ids(spec)
    mounts = []
    for i, mount in enumerate(spec.data_mounts):
        name = mountable_volume(client, namespace, mount.source, principal)
        if name is None:
            raise SpecError(f"data_mounts[{i}].volume", NOT_PUBLISHED.format(mount.source))
        mounts.append(DataMount(source=name, target=mount.target))
    return replace(spec, data_mounts=tuple(mounts))


def remove_data_volume(client: docker.DockerClient, name: str,
                       claimed: Callable[[str], bool], sweep: Sweep) -> None:
    """Remove data volume `name` unless `claimed(name)` (asked under the name's lock) or
    a container uses it; any failure is logged and recorded in `sweep`, never raised."""
    with named_lock(name):
        if claimed(name):
            sweep.kept[name] = "claimed by a live run"
            return
        try:
            client.api.remove_volume(name)
        except docker.errors.NotFound:
            return  # gone already
        except docker.errors.APIError as exc:
            why = "in use by a container" if exc.status_code == 409 else str(exc)
            log.info("data volume kept; a later sweep retries", volume=name, reason=why)
            sweep.kept[name] = why
            return
    sweep.removed.append(name)


def sweep_data_volumes(client: docker.DockerClient, namespace: str, store: str,
                       live: Callable[[str], bool], claimed: Callable[[str], bool],
                       store_gone: Callable[[str], bool] = lambda _store: False) -> Sweep:
    """Release holders (`release_holds`), then remove the namespace's shared data
    volumes that no live run of this store claims and no container (holder or job, of
    any controller) uses. Other namespaces' volumes are never looked at."""
    sweep = Sweep()
    release_holds(client, namespace, store, live, sweep, store_gone)
    selector = [f"{LABEL_DATA}=1", f"{LABEL_NAMESPACE}={namespace}",
                f"{LABEL_OWNER}={OWNER_RUNS}"]
    rows = client.api.volumes(filters={"label": selector}).get("Volumes") or []
    for row in rows:
        if (row.get("Labels") or {}).get(LABEL_NAMESPACE) == namespace:
            remove_data_volume(client, row["Name"], claimed, sweep)
    if sweep.removed:
        log.info("removed unclaimed data volumes", namespace=namespace, volumes=sweep.removed)
    return sweep


def _helper(client: docker.DockerClient, name: str, image: str, role: str,
            labels: dict[str, str]) -> Any:
    """A never-started container with volume `name` at /fill, labelled so that the
    reaper of its namespace removes it if this process dies holding it."""
    owner = labels.get(LABEL_OWNER, OWNER_EXECUTE)
    return client.containers.create(
        image, command=["true"], name=f"bilevel-{role}-{uuid.uuid4().hex[:10]}",
        network_disabled=True, labels={LABEL_DATA: "1", **ownership_labels(
            labels.get(LABEL_NAMESPACE, ""), time.time() + HELPER_SECONDS, owner)},
        mounts=[docker.types.Mount(target=_FILL_TARGET, source=name, type="volume")])


def _fill(client: docker.DockerClient, name: str, source: Path, image: str,
          labels: dict[str, str]) -> None:
    filler = _helper(client, name, image, "fill", labels)
    try:
        if not filler.put_archive(_FILL_TARGET, _tar_of(source)):
            raise docker.errors.DockerException(f"could not copy {source} into volume {name}")
    finally:
        filler.remove(force=True)


def _is_complete(client: docker.DockerClient, name: str, image: str,
                 labels: dict[str, str]) -> bool:
    probe = _helper(client, name, image, "probe", labels)
    try:
        probe.get_archive(f"{_FILL_TARGET}/{_COMPLETE_MARK}")
        return True
    except docker.errors.NotFound:
        return False
    finally:
        probe.remove(force=True)
