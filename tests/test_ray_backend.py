"""The Ray backend on a real two-node Ray cluster, started by this module on loopback.

`test_ray_cluster_in_loopback_namespace` re-runs this module under `unshare` (network
namespace with only lo, PID namespace so no Ray process outlives it); the other tests run
only in there, against a head and a second node, each with its own raylet and one
`bilevel_sandbox` slot, and the real Docker engine (its socket is a file).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import docker
import pytest

from controller.research.tasks.surrogate import SOURCE, SurrogateTask
from controller.sandbox.backend import SandboxBackend
from controller.sandbox.backend_config import (
    BackendConfig,
    ExecutorConfig,
    PoolConfig,
    RayConfig,
    SandboxUnavailable,
)
from controller.sandbox.factory import make_backend
from controller.sandbox.ray_backend import RayExecutor
from controller.sandbox.reaper import LABEL_NAMESPACE
from controller.sandbox.spec import JobSpec, Limits, Status
from controller.store.records import RunState
from tests import ray_cluster

pytestmark = pytest.mark.docker
NAMESPACE = "pytest-ray"
CANARIES = {"ANTHROPIC_API_KEY": "sk-ant-canary-4f1c9e", "OPENAI_API_KEY": "sk-canary-77ab",
            "CONTROLLER_TOKEN": "token-canary-d3b2"}
inside = pytest.mark.skipif(not ray_cluster.in_loopback_namespace(), reason=(
    "runs inside the loopback-only namespace, started by "
    "test_ray_cluster_in_loopback_namespace"))


def test_ray_cluster_in_loopback_namespace() -> None:
    """Run every test below in a fresh network + PID namespace (only loopback)."""
    if ray_cluster.in_loopback_namespace():
        pytest.skip("already inside the namespace")
    env = {**os.environ, ray_cluster.NETNS_ENV: "1", **CANARIES}
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
            __file__, "-k", "not loopback_namespace"]
    done = subprocess.run(ray_cluster.reexec_command(argv), env=env, capture_output=True,
                          text=True, timeout=540, check=False, cwd=Path(__file__).parents[1])
    print(done.stdout[-6000:], done.stderr[-3000:])
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert " passed" in done.stdout and " skipped" not in done.stdout


@pytest.fixture(scope="module")
def cluster() -> Iterator[ray_cluster.Cluster]:
    c = ray_cluster.new_cluster()
    try:
        c.start_head()
        c.add_node()
        yield c
    finally:
        import ray

        ray.shutdown()
        c.stop()
        assert ray_cluster.ray_processes() == []


@pytest.fixture(scope="module")
def ray_ex(cluster: ray_cluster.Cluster, sandbox_image: str) -> Iterator[RayExecutor]:
    """The Ray backend as the controller builds it (sandbox.backend = "ray")."""
    ex = make_backend(ExecutorConfig(image=sandbox_image, namespace=NAMESPACE),
                      BackendConfig("ray", RayConfig(address=cluster.address)))
    assert isinstance(ex, RayExecutor)  # typed so: some tests read its lost-job record
    yield ex
    ex.close()


@pytest.fixture(scope="module")
def local_ex(sandbox_image: str) -> Iterator[SandboxBackend]:
    """The Docker backend as the controller builds it (the default)."""
    ex = make_backend(ExecutorConfig(image=sandbox_image, namespace=NAMESPACE))
    yield ex
    ex.close()


def _ray_nodes() -> list[dict[str, Any]]:
    import ray

    nodes: list[dict[str, Any]] = ray.nodes()  # type: ignore[no-untyped-call]
    return nodes


def _node_ids() -> dict[str, str]:
    """Test node name ("head", "w1") -> Ray node id."""

    out = {}
    for n in _ray_nodes():
        for key in n["Resources"]:
            if n["Alive"] and key.startswith("bilevel_test_"):
                out[key.removeprefix("bilevel_test_")] = n["NodeID"]
    return out


def _py(code: str, **limits: Any) -> JobSpec:
    return JobSpec(files={"main.py": code.encode()}, command=("python", "main.py"),
                   limits=Limits(**{"wall_seconds": 20, "memory_bytes": 128 << 20, **limits}))


CASES = {
    "ok": _py("print('hello from the sandbox')\nopen('/job/out/r.txt','w').write('42')"),
    "error": _py("raise ValueError('boom')"),
    "timeout": _py("import time\ntime.sleep(60)", wall_seconds=2),
    "oom": _py("b = []\nwhile True:\n    b.append(bytearray(8 << 20))", memory_bytes=64 << 20,
               tmp_bytes=8 << 20),
    "self_kill": _py("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)"),
}


@inside
def test_execute_through_ray_returns_the_docker_statuses(
        ray_ex: RayExecutor, local_ex: SandboxBackend) -> None:
    """The same specs through the backend protocol of each: the same statuses."""
    ids = _node_ids()
    assert set(ids) == {"head", "w1"}
    results: dict[str, Any] = {}
    cluster: SandboxBackend = ray_ex

    def one(name: str) -> None:
        results[name] = cluster.run_job(CASES[name])

    threads = [threading.Thread(target=one, args=(n,)) for n in CASES]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lost_before = len(ray_ex.lost)
    for name, spec in CASES.items():
        local = local_ex.run_job(spec)
        remote = results[name]
        assert remote.status is local.status, (name, remote.detail, local.detail)
        assert remote.node in ids.values() and local.node == ""
        assert remote.exit_code == local.exit_code, name
    assert results["ok"].stdout.strip() == "hello from the sandbox"
    assert results["ok"].files == {"r.txt": b"42"}
    assert results["error"].exception is not None
    assert results["error"].exception.type == "ValueError"
    assert [results[n].status for n in ("ok", "error", "timeout", "oom")] == [
        Status.OK, Status.ERROR, Status.TIMEOUT, Status.OOM]
    # A job that kills itself is the job's result, on its node, never a lost node.
    assert results["self_kill"].status is Status.ERROR
    assert "re-run" not in results["self_kill"].detail and len(ray_ex.lost) == lost_before


@inside
def test_data_mounts_reach_the_node_hash_checked(ray_ex: RayExecutor,
                                                 tmp_path: Path) -> None:
    from controller.sandbox.spec import DataMount

    (tmp_path / "split.txt").write_text("tokens " * 100)
    source = ray_ex.ensure_data("data-raytest-split", tmp_path)  # the controller's copy
    spec = JobSpec(files={"main.py": b"print(len(open('/data/s/split.txt').read()))"},
                   command=("python", "main.py"),
                   data_mounts=(DataMount(source=source, target="/data/s"),))
    results = [ray_ex.run_job(spec) for _ in range(2)]
    assert [r.status for r in results] == [Status.OK, Status.OK]
    assert all(r.stdout.strip() == "700" for r in results)
    shipped = ray_ex._shipped[source]
    local = docker.from_env().volumes.get(f"bilevel-node-data-{shipped.digest[:40]}")
    assert local.attrs["Labels"]["io.bilevel.data.sha256"] == shipped.digest


@inside
def test_a_node_keeps_a_warm_pool_of_fresh_containers(cluster: ray_cluster.Cluster,
                                                      sandbox_image: str) -> None:
    """Each node's worker keeps its own pool (ray_worker.py) with the controller's
    settings: once a job of a class ran there, a later one finds a container waiting;
    each is still a fresh container."""
    namespace = f"{NAMESPACE}-pool"  # its waiting containers are no other test's
    ray_ex = make_backend(ExecutorConfig(image=sandbox_image, namespace=namespace,
                                         pool=PoolConfig(size=1)),
                          BackendConfig("ray", RayConfig(address=cluster.address)))
    spec = JobSpec(files={"main.py": b"import socket; print(socket.gethostname())"},
                   command=("python", "main.py"))
    results = []
    try:
        for _ in range(4):
            results.append(ray_ex.run_job(spec))
            time.sleep(3)  # the node's pool refills meanwhile
    finally:
        ray_ex.close()
        client = docker.from_env()
        label = {"label": [f"{LABEL_NAMESPACE}={namespace}"]}
        for row in client.api.containers(all=True, filters=label):
            client.api.remove_container(row["Id"], force=True)
        for row in client.api.volumes(filters=label).get("Volumes") or []:
            client.api.remove_volume(row["Name"], force=True)
    assert all(r.status is Status.OK for r in results), results
    assert any(r.timings.warm for r in results[1:]), [r.timings for r in results]
    assert len({r.stdout.strip() for r in results}) == len(results)  # never reused


@inside
def test_controller_secrets_never_reach_ray_workers(ray_ex: RayExecutor) -> None:
    import ray

    assert all(os.environ[k] == v for k, v in CANARIES.items())  # the driver has them
    spec = _py("import os\nprint(sorted(os.environ.items()))")
    result = ray_ex.run_job(spec)
    assert result.status is Status.OK
    assert not any(v in result.stdout for v in CANARIES.values())

    def worker_view() -> str:  # what a Ray worker process (and its parent) holds
        me = os.getpid()
        parts = []
        for pid in (me, os.getppid()):
            for name in ("environ", "cmdline"):
                with open(f"/proc/{pid}/{name}", "rb") as handle:
                    parts.append(handle.read().decode(errors="replace"))
        return "\n".join(parts)

    probe = ray.remote(worker_view).options(resources={"bilevel_sandbox": 1})
    views = ray.get([probe.remote() for _ in range(4)])
    assert views and not any(v in view for view in views for v in CANARIES.values())
    job = ray_ex._job(spec)
    import pickle

    assert not any(v.encode() in pickle.dumps(job) for v in CANARIES.values())


@inside
def test_cpu_only_nodes_refuse_gpu_jobs(cluster: ray_cluster.Cluster, sandbox_image: str,
                                        ray_ex: RayExecutor) -> None:
    import ray

    with pytest.raises(SandboxUnavailable, match="CPU-only: GPU jobs are refused"):
        RayExecutor(ExecutorConfig(image=sandbox_image, namespace=NAMESPACE),
                    RayConfig(address=cluster.address, gpus_per_slot=1))
    # The node checks again: a GPU job that lands on a node without a GPU is refused.
    from controller.sandbox.ray_backend import _run_on_node_entry
    from controller.sandbox.ray_worker import NodeJob

    task = ray.remote(_run_on_node_entry).options(resources={"bilevel_sandbox": 1},
                                                  max_retries=0)
    job = NodeJob(spec=CASES["ok"], config=ray_ex.node_config, gpus_per_slot=1)
    with pytest.raises(ray.exceptions.RayTaskError, match="holds no GPU"):
        ray.get(task.remote(job))


@inside
def test_cancel_reaches_the_remote_container(ray_ex: RayExecutor) -> None:
    client = docker.from_env()
    cancel = threading.Event()
    box: dict[str, Any] = {}
    runner = threading.Thread(target=lambda: box.update(r=ray_ex.run_job(
        _py("import time\nprint('started', flush=True)\ntime.sleep(120)", wall_seconds=200),
        cancel=cancel)))
    runner.start()
    selector = {"label": [f"{LABEL_NAMESPACE}={NAMESPACE}", "io.bilevel.ray.node"]}
    deadline = time.monotonic() + 60
    while not client.containers.list(filters=selector) and time.monotonic() < deadline:
        time.sleep(0.2)
    running = client.containers.list(filters=selector)
    assert len(running) == 1
    cancel.set()
    runner.join(timeout=90)
    assert box["r"].status is Status.KILLED
    assert client.containers.list(all=True, filters={"id": running[0].id}) == []


@inside
def test_two_slots_use_both_nodes_and_a_lost_node_loses_no_trial(
        cluster: ray_cluster.Cluster, ray_ex: RayExecutor, tmp_path: Path) -> None:

    from tests.test_loop_harness import make_loop, run_settings

    ids = _node_ids()
    # Each trial's job sleeps, so one is surely running on w1 when its raylet dies.
    slow = "import time\ntime.sleep(2)\n" + SOURCE.read_text()
    task = SurrogateTask(ray_ex, baseline=slow)
    parts = make_loop(tmp_path, cast(Any, task),
                      run_settings(6, batch_size=2, seed=3, final_seeds=0))
    assert ray_ex.config.slots == 2
    runner = threading.Thread(target=parts.loop.run)
    runner.start()
    client = docker.from_env()
    on_w1 = {"label": [f"{LABEL_NAMESPACE}={NAMESPACE}", f"io.bilevel.ray.node={ids['w1']}"]}
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline:  # a trial finished on w1, and w1 runs another
        done_on_w1 = [t for t in parts.store.trials("run-test") if t.finished
                      and t.node == ids["w1"]]
        if done_on_w1 and client.containers.list(filters=on_w1):
            break
        time.sleep(0.2)
    assert client.containers.list(filters=on_w1), "no job ran on the second node"
    os.kill(cluster.raylet_pid(ids["w1"]), 9)
    runner.join(timeout=240)
    assert not runner.is_alive()
    run = parts.store.get_run("run-test")
    assert run.state is RunState.SUCCEEDED, run.stop_reason
    trials = parts.store.trials("run-test")
    assert len(trials) == 7 and all(t.finished for t in trials)
    # Each ended on its own merits (a modelled OOM is the candidate's), none by the loss.
    assert all(t.job_status in ("ok", "error") for t in trials), [t.job_status for t in trials]
    nodes = [t.node for t in trials]
    assert ids["head"] in nodes and ids["w1"] in nodes  # both nodes ran trials
    assert [x.rerun_node for x in ray_ex.lost] == [ids["head"]]
    assert nodes[-1] == ids["head"] or nodes.count(ids["head"]) >= 2
    # The killed node's container is reaped (its owner, the dead worker, is gone).
    from controller.sandbox.reaper import reap

    leaked = {"label": [f"{LABEL_NAMESPACE}={NAMESPACE}", "io.bilevel.ray.node"]}
    deadline = time.monotonic() + 60  # the dead node's worker process may take a moment
    while client.containers.list(all=True, filters=leaked) and time.monotonic() < deadline:
        reap(client, NAMESPACE)
        time.sleep(1)
    left = client.containers.list(all=True, filters=leaked)
    assert left == [], [(c.status, c.labels) for c in left]


@inside
def test_cli_run_on_the_ray_backend_records_the_nodes(
        cluster: ray_cluster.Cluster, ray_ex: RayExecutor, tmp_path: Path) -> None:
    """The README's command: an in-process controller with --backend ray."""
    import sqlite3

    ids = set(_node_ids().values())
    done = subprocess.run(
        [str(Path(sys.executable).with_name("bilevel")), "run", "--preset", "surrogate",
         "--trials", "3", "--batch", "2", "--final-seeds", "0", "--backend", "ray",
         "--ray-address", cluster.address, "--image", ray_ex.image,
         "--namespace", NAMESPACE, "--state-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    with sqlite3.connect(tmp_path / "bilevel.sqlite3") as db:
        rows = db.execute("SELECT idx, finished, node FROM trials ORDER BY idx").fetchall()
    assert len(rows) == 4 and all(finished == 1 and node in ids for _, finished, node in rows)
