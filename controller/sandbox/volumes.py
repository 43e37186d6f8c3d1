"""Read-only data volumes: a host folder copied once into a labelled Docker volume.

Volumes (not bind mounts) keep jobs independent of the controller's filesystem, which
matters when the controller itself runs in a container. A volume is named by its
content's hash by the caller, so it is filled once and then reused.

Two kinds: trusted code (trainer/run.py's train and validation splits) mounts volumes
by Docker name through JobSpec directly; an API client can mount only a volume
published for clients (`publish_data_volume`), by the id it was handed, and only in the
controller namespace that published it (`resolve_data_mounts`). Nothing else, in
particular no evaluation split and no other Docker volume, is mountable from a request.
"""

from __future__ import annotations

import io
import re
import tarfile
import uuid
from dataclasses import replace
from pathlib import Path

import docker
import docker.errors

from controller.sandbox.hardening import SANDBOX_UID
from controller.sandbox.reaper import LABEL_NAMESPACE
from controller.sandbox.spec import DataMount, JobSpec, SpecError

LABEL_DATA = "io.bilevel.data"
LABEL_DATA_ID = "io.bilevel.data.id"
LABEL_MOUNTABLE = "io.bilevel.data.mountable"  # "1" only on volumes published for clients
DATA_ID = re.compile(r"^data-[0-9a-f]{20}$")
_FILL_TARGET = "/fill"
_COMPLETE_MARK = ".bilevel-complete"


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
                       image: str) -> str:
    """Create volume `name` holding a copy of `source` unless a complete one exists.

    A throwaway container (never started) from the sandbox image is the copy target;
    the completion mark is written last so a half-filled volume is refilled.
    """
    try:
        volume = client.volumes.get(name)
        if _is_complete(client, name, image):
            return name
        volume.remove(force=True)
    except docker.errors.NotFound:
        pass
    _fill(client, name, source, image, {LABEL_DATA: "1", LABEL_MOUNTABLE: "0"})
    return name


def publish_data_volume(client: docker.DockerClient, namespace: str, source: Path,
                        image: str) -> str:
    """Copy `source` into a new volume that API clients of controller namespace
    `namespace` may mount; returns its id (what ExecuteRequest.data_mounts[].volume
    names). The id is issued only once the copy is complete."""
    data_id = f"data-{uuid.uuid4().hex[:20]}"
    _fill(client, f"bilevel-{data_id}", source, image, {
        LABEL_DATA: "1", LABEL_DATA_ID: data_id, LABEL_MOUNTABLE: "1",
        LABEL_NAMESPACE: namespace})
    return data_id


def mountable_volume(client: docker.DockerClient, namespace: str, data_id: str) -> str | None:
    """The Docker name of the client-mountable volume `data_id` of `namespace`, or None."""
    if not DATA_ID.match(data_id):
        return None
    rows = client.api.volumes(filters={"label": [
        f"{LABEL_DATA_ID}={data_id}", f"{LABEL_MOUNTABLE}=1",
        f"{LABEL_NAMESPACE}={namespace}"]}).get("Volumes") or []
    want = {LABEL_DATA: "1", LABEL_DATA_ID: data_id, LABEL_MOUNTABLE: "1",
            LABEL_NAMESPACE: namespace}
    names = [row["Name"] for row in rows
             if all((row.get("Labels") or {}).get(k) == v for k, v in want.items())]
    return names[0] if len(names) == 1 else None


def check_data_ids(spec: JobSpec) -> None:
    """A request's data_mounts name data ids; anything else is refused before Docker."""
    for i, mount in enumerate(spec.data_mounts):
        if not DATA_ID.match(mount.volume):
            raise SpecError(f"data_mounts[{i}].volume", _REFUSED.format(mount.volume))


def resolve_data_mounts(client: docker.DockerClient, namespace: str, spec: JobSpec) -> JobSpec:
    """`spec` from a request with each data id replaced by its volume's Docker name;
    SpecError naming `data_mounts[i].volume` for an id this namespace did not publish."""
    check_data_ids(spec)
    mounts = []
    for i, mount in enumerate(spec.data_mounts):
        name = mountable_volume(client, namespace, mount.volume)
        if name is None:
            raise SpecError(f"data_mounts[{i}].volume", _REFUSED.format(mount.volume))
        mounts.append(DataMount(volume=name, target=mount.target))
    return replace(spec, data_mounts=tuple(mounts))


_REFUSED = ("{!r} is not a data volume published to clients of this controller: give "
            "the id (data-...) the controller handed out; Docker volume names and "
            "evaluation data cannot be mounted from a request")


def _fill(client: docker.DockerClient, name: str, source: Path, image: str,
          labels: dict[str, str]) -> None:
    client.volumes.create(name=name, labels=labels)
    filler = client.containers.create(
        image, command=["true"], name=f"bilevel-fill-{uuid.uuid4().hex[:10]}",
        network_disabled=True, labels={LABEL_DATA: "1"},
        mounts=[docker.types.Mount(target=_FILL_TARGET, source=name, type="volume")])
    try:
        if not filler.put_archive(_FILL_TARGET, _tar_of(source)):
            raise docker.errors.DockerException(f"could not copy {source} into volume {name}")
    finally:
        filler.remove(force=True)


def _is_complete(client: docker.DockerClient, name: str, image: str) -> bool:
    probe = client.containers.create(
        image, command=["true"], name=f"bilevel-probe-{uuid.uuid4().hex[:10]}",
        network_disabled=True, labels={LABEL_DATA: "1"},
        mounts=[docker.types.Mount(target=_FILL_TARGET, source=name, type="volume")])
    try:
        probe.get_archive(f"{_FILL_TARGET}/{_COMPLETE_MARK}")
        return True
    except docker.errors.NotFound:
        return False
    finally:
        probe.remove(force=True)
