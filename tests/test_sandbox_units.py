"""Unit tests of pure sandbox logic: container config, spec validation, tar safety,
output capture and orphan detection. No Docker needed."""

from __future__ import annotations

import io
import os
import socket
import tarfile

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.sandbox import archive
from controller.sandbox.hardening import container_kwargs, host_pids_limit
from controller.sandbox.output import OutputCapture
from controller.sandbox.reaper import LABEL_CONTROLLER, LABEL_DEADLINE, is_orphan, this_owner
from controller.sandbox.spec import DataMount, JobSpec, Limits, SpecError


def kwargs_for(**fields: object) -> dict[str, object]:
    spec = JobSpec(files={}, command=("python3", "x.py"), **fields)  # type: ignore[arg-type]
    return container_kwargs(spec, image="img:1", name="job-1", volume="vol-1",
                            labels={"a": "b"})


def test_every_hardening_key_is_set() -> None:
    kw = kwargs_for(limits=Limits(memory_bytes=512 << 20, cpus=1.5, pids=99,
                                  tmp_bytes=32 << 20))
    assert kw["user"] == "0:0"  # the runner; it starts the job as 10001 without caps
    assert kw["network_mode"] == "none"
    assert kw["network_disabled"] is True
    assert kw["cap_drop"] == ["ALL"]
    assert kw["cap_add"] == ["CHOWN", "KILL", "SETGID", "SETPCAP", "SETUID"]
    security = kw["security_opt"]
    assert isinstance(security, list) and len(security) == 2
    assert security[0] == "no-new-privileges:true" and security[1].startswith("seccomp={")
    assert kw["read_only"] is True
    assert kw["privileged"] is False
    assert kw["ipc_mode"] == "private"
    assert "pid_mode" not in kw and "userns_mode" not in kw
    assert kw["mem_limit"] == kw["memswap_limit"] == 512 << 20
    assert kw["nano_cpus"] == 1_500_000_000
    assert kw["pids_limit"] == 99
    assert kw["tmpfs"] == {"/tmp": f"rw,noexec,nosuid,nodev,size={32 << 20}",
                           "/job": f"rw,exec,nosuid,nodev,size={256 << 20},mode=0755"}
    assert kw["shm_size"] == 128 << 20
    ulimits = {u["Name"]: (u["Soft"], u["Hard"]) for u in kw["ulimits"]}  # type: ignore[attr-defined]
    assert ulimits == {"core": (0, 0), "nofile": (1024, 1024)}
    assert kw["log_config"]["Config"] == {"max-size": "16m", "max-file": "1"}  # type: ignore[index]
    assert kw["device_requests"] == []
    assert kw["environment"] == {"BILEVEL_JOB": "job-1"}
    assert kw["command"] == ["/opt/venv/bin/python3", "-I", "-S", "/opt/bilevel/runner.py"]


def test_job_volume_is_the_only_writable_mount() -> None:
    kw = kwargs_for(data_mounts=(DataMount(source="tokens", target="/data/train"),))
    mounts = {m["Target"]: m for m in kw["mounts"]}  # type: ignore[attr-defined]
    assert mounts["/bilevel"]["ReadOnly"] is False and mounts["/bilevel"]["Source"] == "vol-1"
    assert mounts["/data/train"]["ReadOnly"] is True
    assert mounts["/data/train"]["Type"] == "volume"


def test_gpu_ids_become_one_device_request_naming_them() -> None:
    kw = kwargs_for(gpu_ids=("2", "GPU-1c2d"))
    requests: list[dict[str, object]] = kw["device_requests"]  # type: ignore[assignment]
    (request,) = requests
    assert request["DeviceIDs"] == ["2", "GPU-1c2d"]
    assert request["Capabilities"] == [["gpu"]]
    assert request["Count"] == 0  # only the named devices, never "all"
    assert kw["environment"]["NVIDIA_VISIBLE_DEVICES"] == "2,GPU-1c2d"  # type: ignore[index]


def test_gvisor_gets_host_pid_headroom_and_in_sandbox_limit() -> None:
    spec = JobSpec(files={}, command=("x",), runtime="runsc", limits=Limits(pids=50))
    assert host_pids_limit(spec) > 50
    assert kwargs_for(runtime="runsc")["runtime"] == "runsc"


@pytest.mark.parametrize(("fields", "field_name"), [
    ({"command": ()}, "command"),
    ({"runtime": "kata"}, "runtime"),
    ({"files": {"../escape.py": b""}}, "files['../escape.py']"),
    ({"files": {"/etc/passwd": b""}}, "files['/etc/passwd']"),
    ({"limits": Limits(wall_seconds=0)}, "limits.wall_seconds"),
    ({"limits": Limits(memory_bytes=1)}, "limits.memory_bytes"),
    ({"limits": Limits(pids=1)}, "limits.pids"),
    ({"limits": Limits(memory_bytes=64 << 20, tmp_bytes=128 << 20)}, "limits.tmp_bytes"),
    ({"gpu_ids": ("0; rm -rf /",)}, "gpu_ids"),
    ({"data_mounts": (DataMount(source="v", target="/job/x"),)}, "data_mounts[0].target"),
    ({"data_mounts": (DataMount(source="v", target="relative"),)}, "data_mounts[0].target"),
    ({"data_mounts": (DataMount(source="/host/path", target="/data"),)},
     "data_mounts[0].source"),
    ({"env": {"BILEVEL_METRICS": "/etc/x"}}, "env['BILEVEL_METRICS']"),
])
def test_invalid_spec_names_the_field(fields: dict[str, object], field_name: str) -> None:
    base: dict[str, object] = {"files": {}, "command": ("python3",)}
    spec = JobSpec(**{**base, **fields})  # type: ignore[arg-type]
    with pytest.raises(SpecError) as info:
        spec.validate()
    assert info.value.field == field_name


def _tar(entries: list[tarfile.TarInfo], payload: bytes = b"data") -> list[bytes]:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for info in entries:
            if info.isfile():
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
            else:
                tar.addfile(info)
    raw = buffer.getvalue()
    return [raw[i:i + 1000] for i in range(0, len(raw), 1000)]


def _entry(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    return info


def test_unpack_refuses_links_escapes_and_devices() -> None:
    chunks = _tar([
        _entry("out", tarfile.DIRTYPE), _entry("out/ok.txt"),
        _entry("out/../../etc/cron.d/x"), _entry("/abs/path"),
        _entry("out/link", tarfile.SYMTYPE, "/etc/shadow"),
        _entry("out/hard", tarfile.LNKTYPE, "out/ok.txt"),
        _entry("out/dev", tarfile.CHRTYPE),
    ])
    got = archive.unpack_returned(chunks, root="out", max_bytes=1 << 20)
    assert got.files == {"ok.txt": b"data"}
    assert len(got.refused) == 5


def test_unpack_stops_at_the_byte_budget() -> None:
    chunks = _tar([_entry(f"out/f{i}") for i in range(10)], payload=b"x" * 1000)
    got = archive.unpack_returned(chunks, root="out", max_bytes=3500)
    assert got.over_budget
    assert sum(len(v) for v in got.files.values()) <= 3500


def test_pack_job_places_files_under_in_owned_by_root() -> None:
    raw = archive.pack_job({"a/b/c.py": b"print()"}, {"command": ["x"]})
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        names = {m.name: m for m in tar.getmembers()}
    assert set(names) == {"in", "in/a", "in/a/b", "in/a/b/c.py", "job.json"}
    assert all(m.uid == m.gid == 0 for m in names.values())  # the job cannot change them


@given(st.lists(st.binary(max_size=300), max_size=40))
def test_output_capture_keeps_exact_head_and_tail(chunks: list[bytes]) -> None:
    capture = OutputCapture(head_bytes=100, tail_bytes=50)
    for chunk in chunks:
        capture.feed(chunk)
    whole = b"".join(chunks)
    assert capture.total == len(whole)
    assert capture.head() == whole[:100].decode("utf-8", errors="replace")
    rest = whole[100:]
    assert capture.tail() == rest[-50:].decode("utf-8", errors="replace") if rest else True


def test_orphan_rules() -> None:
    now = 1_000_000.0
    mine = {LABEL_CONTROLLER: this_owner(), LABEL_DEADLINE: str(now + 100)}
    assert not is_orphan(mine, now)
    dead = {LABEL_CONTROLLER: f"{socket.gethostname()}:{2**22 + 7}:123", LABEL_DEADLINE: str(now)}
    assert is_orphan(dead, now)
    reused_pid = {LABEL_CONTROLLER: f"{socket.gethostname()}:{os.getpid()}:0",
                  LABEL_DEADLINE: str(now + 100)}
    assert is_orphan(reused_pid, now)
    elsewhere = {LABEL_CONTROLLER: "other-host:1:1", LABEL_DEADLINE: str(now - 10)}
    assert not is_orphan(elsewhere, now)
    assert is_orphan(elsewhere, now + 10_000)
