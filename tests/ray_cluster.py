"""A real two-node Ray cluster on loopback, for tests and the scale-out benchmark.

Only ever started inside a network namespace that has nothing but loopback (see
`in_loopback_namespace` and `reexec_command`): outside one, Ray binds the host's interface
and probes an outside resolver. The namespace is also a PID namespace, so every Ray
process dies with it; `stop()` still ends them first, by pid.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

NETNS_ENV = "BILEVEL_RAY_NETNS"
RAY = str(Path(sys.executable).with_name("ray"))
# Fast detection of a dead node, so a lost-node test does not wait for the defaults.
_FAST_HEALTH = {"RAY_health_check_period_ms": "500", "RAY_health_check_timeout_ms": "1000",
                "RAY_health_check_failure_threshold": "3", "RAY_USAGE_STATS_ENABLED": "0"}


def in_loopback_namespace() -> bool:
    """True inside our namespace: the marker is set and lo is the only interface."""
    import socket

    return os.environ.get(NETNS_ENV) == "1" and \
        [name for _, name in socket.if_nameindex()] == ["lo"]


def reexec_command(argv: list[str]) -> list[str]:
    """`argv` run in fresh network + PID namespaces with only loopback up."""
    # Not exec: bash stays PID 1 of the namespace and reaps the processes orphaned
    # there (a Ray worker whose raylet was killed), so none lingers as a zombie that
    # still looks alive to the reaper's owner check.
    inner = "ip link set lo up && " + " ".join(_quote(a) for a in argv)
    return ["unshare", "--net", "--pid", "--fork", "--mount-proc", "bash", "-c", inner]


def _quote(arg: str) -> str:
    return "'" + arg.replace("'", "'\\''") + "'"


def _clean_env() -> dict[str, str]:
    """What a Ray node gets: no controller secrets, only a PATH and a HOME."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/root",
            "LANG": "C.UTF-8", **_FAST_HEALTH}


@dataclass
class Cluster:
    port: int
    temp_dir: str
    nodes: list[str] = field(default_factory=list)  # "head", "w1", ... in start order

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _start(self, args: list[str], slots: int, name: str,
               extra: dict[str, float] | None = None) -> None:
        resources = json.dumps({"bilevel_sandbox": slots, f"bilevel_test_{name}": 1,
                                **(extra or {})})
        # Each node its own loopback address: a driver on 127.0.0.1 then attaches to
        # the head's raylet, never to a node a test kills.
        ip = f"127.0.0.{len(self.nodes) + 1}"
        cmd = [RAY, "start", *args, "--node-ip-address", ip, "--num-cpus",
               str(max(2, slots)), "--resources", resources, "--object-store-memory",
               str(200 << 20), "--disable-usage-stats"]
        done = subprocess.run(cmd, env=_clean_env(), capture_output=True, text=True,
                              timeout=120, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"ray start failed: {done.stdout}\n{done.stderr}")
        self.nodes.append(name)

    def start_head(self, slots: int = 1, extra: dict[str, float] | None = None) -> None:
        self._start(["--head", "--port", str(self.port), "--include-dashboard=false",
                     "--temp-dir", self.temp_dir], slots, "head", extra)

    def add_node(self, slots: int = 1) -> str:
        name = f"w{len(self.nodes)}"
        self._start(["--address", self.address], slots, name)
        return name

    def raylet_pid(self, node_id: str) -> int:
        """The pid of node `node_id`'s raylet."""
        for pid in _pids():
            cmd = _cmdline(pid)
            if cmd and cmd[0].endswith("raylet") and f"--node_id={node_id}" in cmd:
                return pid
        raise LookupError(f"no raylet for node {node_id}")

    def stop(self) -> None:
        """End every Ray process of this namespace, by pid, then remove the temp dir."""
        me = os.getpid()
        for pid in _pids():
            if pid != me and pid != 1 and _is_ray(_cmdline(pid)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return [a.decode(errors="replace") for a in handle.read().split(b"\0") if a]
    except OSError:
        return []


def _is_ray(cmd: list[str]) -> bool:
    text = " ".join(cmd)
    return "ray" in text and ("/ray/" in text or "raylet" in text or "gcs_server" in text
                              or "ray::" in text or "default_worker.py" in text)


def ray_processes() -> list[int]:
    return [p for p in _pids() if p != os.getpid() and _is_ray(_cmdline(p))]


def new_cluster() -> Cluster:
    """A cluster object with a free port and its own temp dir (not /tmp/ray)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return Cluster(port=port, temp_dir=tempfile.mkdtemp(prefix="bilevel-ray-"))
