"""`bilevel exec FILE`: run one Python file in the sandbox and print its result."""

from __future__ import annotations

import argparse
import codecs
import json
import sys
from pathlib import Path

from controller.commands.live_view import terminal_safe
from controller.sandbox.backend_config import ExecutorConfig, SandboxUnavailable
from controller.sandbox.factory import make_backend
from controller.sandbox.spec import JobResult, Limits, SpecError, Status


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cmd = sub.add_parser("exec", help="run a Python file in a sandbox container")
    cmd.add_argument("file", type=Path)
    cmd.add_argument("--runtime", choices=("auto", "runc", "runsc"), default="auto",
                     help="gVisor (runsc) or runc; auto (default): runsc where the engine "
                          "has it registered, else runc with a warning")
    cmd.add_argument("--timeout", type=float, default=60.0, help="wall-time limit, seconds")
    cmd.add_argument("--memory-mb", type=int, default=1024)
    cmd.add_argument("--cpus", type=float, default=1.0)
    cmd.add_argument("--json", action="store_true", help="print the result as JSON")
    cmd.set_defaults(func=cmd_exec)


def cmd_exec(args: argparse.Namespace) -> int:
    from controller.sandbox.spec import JobSpec

    try:
        source = args.file.read_bytes()
    except OSError as exc:
        print(f"error: FILE {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    try:
        executor = make_backend(ExecutorConfig(slots=1, runtime=args.runtime))
        spec = JobSpec(
            files={args.file.name: source},
            command=("python3", args.file.name),
            limits=Limits(wall_seconds=args.timeout, memory_bytes=args.memory_mb << 20,
                          cpus=args.cpus),
            runtime=executor.runtime,
        )
        result = executor.run_job(spec, on_output=_echo if not args.json else None)
    except (SandboxUnavailable, SpecError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result_to_dict(result), indent=2))
    else:
        print(f"\nstatus: {result.status.value}  exit_code: {result.exit_code}  "
              f"run: {result.timings.run_s:.2f}s", file=sys.stderr)
        if result.detail:
            print(f"detail: {result.detail}", file=sys.stderr)
        if result.metrics:
            print(f"metrics: {json.dumps(result.metrics)}", file=sys.stderr)
    return 0 if result.status is Status.OK else 1


_DECODERS = {name: codecs.getincrementaldecoder("utf-8")(errors="replace")
             for name in ("stdout", "stderr")}  # a character may span two chunks


def _echo(stream: str, chunk: bytes) -> None:
    """The job's output as it comes; on a terminal with its escape sequences shown,
    not obeyed (the job is untrusted code)."""
    target = sys.stdout if stream == "stdout" else sys.stderr
    text = _DECODERS[stream].decode(chunk)
    target.write(terminal_safe(text) if target.isatty() else text)
    target.flush()


def result_to_dict(result: JobResult) -> dict[str, object]:
    exc = result.exception
    return {
        "status": result.status.value,
        "exit_code": result.exit_code,
        "stdout": result.stdout,
        "stderr": result.stderr,
        "metrics": result.metrics,
        "files": sorted(result.files),
        "exception": None if exc is None else {
            "type": exc.type, "message": exc.message,
            "frames": [vars(f) for f in exc.frames]},
        "timings": vars(result.timings),
        "detail": result.detail,
    }
