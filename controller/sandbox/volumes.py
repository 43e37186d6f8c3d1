"""Read-only data volumes: a host folder copied once into a labelled Docker volume.

Volumes (not bind mounts) keep jobs independent of the controller's filesystem, which
matters when the controller itself runs in a container. A volume is named by its
content's hash by the caller, so it is filled once and then reused.
"""

from __future__ import annotations

import io
import tarfile
import uuid
from pathlib import Path

import docker
import docker.errors

from controller.sandbox.hardening import SANDBOX_UID

LABEL_DATA = "io.bilevel.data"
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
    client.volumes.create(name=name, labels={LABEL_DATA: "1"})
    filler = client.containers.create(
        image, command=["true"], name=f"bilevel-fill-{uuid.uuid4().hex[:10]}",
        network_disabled=True, labels={LABEL_DATA: "1"},
        mounts=[docker.types.Mount(target=_FILL_TARGET, source=name, type="volume")])
    try:
        if not filler.put_archive(_FILL_TARGET, _tar_of(source)):
            raise docker.errors.DockerException(f"could not copy {source} into volume {name}")
    finally:
        filler.remove(force=True)
    return name


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
