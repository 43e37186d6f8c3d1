"""Controller memory under concurrent large Execute bodies, and another client's ListRuns.

Starts a controller in a subprocess on loopback with a token (TCP needs one; its Docker
engine unreachable, so each admitted call is read, parsed and converted, then ends
UNAVAILABLE: the receive path is what is measured), sends COUNT concurrent Execute calls
of MIB MiB each from separate connections while another client calls ListRuns every
0.2 s, and reads the controller's /proc status: peak RSS (VmHWM) and RSS after the calls
(retained), each minus RSS before.
With --baseline-tree (a checkout of the code before, e.g. `git archive a63fcdb | tar -x
-C /tmp/base`) both trees run, alternating, in this process; medians of --repeat runs.

Usage: python bench/execute_memory.py [--count 6] [--mib 250] [--repeat 3]
                                      [--baseline-tree DIR] [--settle 3]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc

from controller.api.gen.bilevel.v1 import runs_pb2 as rpb
from controller.api.gen.bilevel.v1 import sandbox_pb2 as spb

ROOT = Path(__file__).resolve().parents[1]
EXECUTE = "/bilevel.v1.SandboxService/Execute"
LIST_RUNS = "/bilevel.v1.RunService/ListRuns"
TOKEN = "bench-execute-memory-0123456789"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
SERVER = textwrap.dedent("""
    import asyncio, sys
    from pathlib import Path
    from controller.api.server import ControllerServer
    from controller.config import ServerConfig
    from controller.sandbox.backend_config import ExecutorConfig
    async def main():
        server = ControllerServer(ServerConfig(
            listen="127.0.0.1:0", state_dir=Path(sys.argv[1]), tokens=(sys.argv[2],),
            executor=ExecutorConfig(docker_url="unix:///nonexistent/docker.sock")))
        print("PORT", await server.start(), flush=True)
        await asyncio.Event().wait()
    asyncio.run(main())
""")


@dataclass(frozen=True)
class Sample:
    peak_mib: int
    retained_mib: int
    codes: Counter[str]
    list_max_s: float  # the slowest ListRuns of the other client during the flood


def status_mib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) // 1024
    raise KeyError(key)


def one_run(tree: Path, body: bytes, count: int, settle: float) -> Sample:
    with tempfile.TemporaryDirectory() as state:
        env = {**os.environ, "PYTHONPATH": str(tree)}
        proc = subprocess.Popen([sys.executable, "-c", SERVER, state, TOKEN], cwd=tree,
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            assert proc.stdout is not None
            port = next(int(line.split()[1]) for line in proc.stdout
                        if line.startswith(b"PORT"))
            address = f"127.0.0.1:{port}"
            time.sleep(1.0)
            before = status_mib(proc.pid, "VmRSS")
            stop = threading.Event()
            slowest = [0.0]
            watcher = threading.Thread(target=_list_runs, args=(address, stop, slowest))
            watcher.start()
            with ThreadPoolExecutor(count) as pool:
                codes = Counter(pool.map(lambda _: _execute(address, body), range(count)))
            stop.set()
            watcher.join()
            time.sleep(settle)
            return Sample(status_mib(proc.pid, "VmHWM") - before,
                          status_mib(proc.pid, "VmRSS") - before, codes, slowest[0])
        finally:
            proc.kill()
            proc.wait()


def _execute(address: str, body: bytes) -> str:
    channel = grpc.insecure_channel(address, options=[
        ("grpc.max_send_message_length", len(body) + (1 << 20)),
        ("grpc.use_local_subchannel_pool", 1)])  # a connection of its own
    try:
        list(channel.unary_stream(EXECUTE)(body, timeout=300, metadata=AUTH))
        return "OK"
    except grpc.RpcError as exc:
        return str(exc.code().name)
    finally:
        channel.close()


def _list_runs(address: str, stop: threading.Event, slowest: list[float]) -> None:
    channel = grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
    call = channel.unary_unary(LIST_RUNS)
    request = rpb.ListRunsRequest().SerializeToString()
    while not stop.is_set():
        started = time.monotonic()
        with contextlib.suppress(grpc.RpcError):  # a failure counts as slow as it was
            call(request, timeout=60, metadata=AUTH)
        slowest[0] = max(slowest[0], time.monotonic() - started)
        stop.wait(0.2)
    channel.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=6)
    parser.add_argument("--mib", type=int, default=250)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--settle", type=float, default=3.0,
                        help="seconds after the calls before RSS is read as retained")
    parser.add_argument("--baseline-tree", type=Path, default=None)
    args = parser.parse_args()
    body = spb.ExecuteRequest(files={"big.bin": b"x" * (args.mib << 20)},
                              command=["true"]).SerializeToString()
    trees = {"current": ROOT}
    if args.baseline_tree is not None:
        trees = {"baseline": args.baseline_tree.resolve(), **trees}
    samples: dict[str, list[Sample]] = {name: [] for name in trees}
    for _ in range(args.repeat):  # alternate, so drift hits both alike
        for name, tree in trees.items():
            samples[name].append(one_run(tree, body, args.count, args.settle))
    print(f"{args.count} concurrent Execute bodies of {args.mib} MiB, medians of "
          f"{args.repeat} (RSS growth over the idle controller)")
    print(f"{'tree':<9} {'peak MiB':>9} {'retained MiB':>13} {'ListRuns max s':>15}  codes")
    for name, runs in samples.items():
        codes = sum((s.codes for s in runs), Counter())
        print(f"{name:<9} {statistics.median(s.peak_mib for s in runs):>9.0f} "
              f"{statistics.median(s.retained_mib for s in runs):>13.0f} "
              f"{statistics.median(s.list_max_s for s in runs):>15.2f}  "
              f"{dict(sorted(codes.items()))}")


if __name__ == "__main__":
    main()
