"""A long-lived hardened container on a Docker engine, spoken to with JSON lines over its
stdio: the Docker backend's mechanism session (backend.py's MechanismSession).

One-shot jobs (docker_job.py) suit trials; a search mechanism is called a few times per
trial for the whole run, so it gets a session: the same hardened container config
(`container_kwargs`), the same job-volume layout and in-container runner as PID 1, plus
an open stdin. Requests go in on stdin, one JSON line each; the container answers one
JSON line on stdout; stderr is captured (head and tail, capped) for failure reports.

Why docker attach rather than a FIFO in the job volume: attach needs no host path and
no second process in the container, works the same under runc and gVisor (a FIFO in a
volume is shared through gVisor's gofer, which does not carry FIFO semantics to the
host), and works when the controller itself runs in a container. The attach connection
is hijacked, so it gets a dedicated APIClient and is never returned to the pool. It is
opened BEFORE the container starts, so no byte of output can be missed or left in the
HTTP response buffer. With tty=False the engine multiplexes stdout and stderr into
frames with an 8-byte header (stream, 0, 0, 0, big-endian length); `_Frames` parses
them. JSON lines never contain raw control bytes, so docker's detach keys (ctrl-p
ctrl-q) can never appear in a request.

Every failure of the container - a call past its time limit, death (OOM or otherwise),
a flood of output, a reply that is not the protocol - kills the session and raises
`SessionDead`; nothing is retried (replies.py).
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import struct
import threading
import time
import uuid
from dataclasses import replace
from typing import Any, NoReturn

import docker
import docker.errors
import structlog

from controller.sandbox import archive
from controller.sandbox.backend_config import SandboxUnavailable
from controller.sandbox.docker_engine import ENGINE_ERRORS, DockerEngine
from controller.sandbox.hardening import VOLUME_TARGET, container_kwargs, runner_job
from controller.sandbox.output import OutputCapture
from controller.sandbox.replies import (
    MAX_LINE_BYTES,
    DeathReason,
    Reply,
    SessionDead,
    parse_reply,
)
from controller.sandbox.spec import JobSpec

log = structlog.get_logger(__name__)

_HEADER = struct.Struct(">BxxxL")


def _readable(sock: socket.socket, timeout: float) -> bool:
    """Whether `sock` has data (or EOF) within `timeout` seconds. poll, not select: a
    controller holding many connections has descriptors past select's limit of 1024."""
    poller = select.poll()
    poller.register(sock, select.POLLIN | select.POLLHUP | select.POLLERR)
    return bool(poller.poll(max(0.0, timeout) * 1000))


_DOCKER_ERRORS = (*ENGINE_ERRORS, OSError)


class _Frames:
    """Reads the multiplexed attach stream: stdout as lines, stderr into a capture.

    Frames are routed as their bytes arrive, not once complete: one write of 100 MB is
    one frame, and waiting for it whole would buffer all of it before any cap applies.
    The output cap and the line cap are checked after every read of the socket."""

    def __init__(self, sock: socket.socket, output_cap: int) -> None:
        self.sock = sock
        self.cap = output_cap
        self.raw = bytearray()  # read, not yet routed
        self.kind = 0  # the current frame's stream (1 stdout, 2 stderr)
        self.left = 0  # its payload bytes still to come
        self.stdout = bytearray()  # stdout not yet split into lines
        self.scanned = 0  # bytes of `stdout` known to hold no newline
        self.stderr = OutputCapture()
        self.total = 0

    def line(self, deadline: float) -> bytes | None:
        """The next stdout line (without newline); None at end of stream."""
        while True:
            cut = self.stdout.find(b"\n", self.scanned)
            if cut >= 0:
                line = bytes(self.stdout[:cut])
                del self.stdout[:cut + 1]
                self.scanned = 0
                return line
            self.scanned = len(self.stdout)
            if len(self.stdout) > MAX_LINE_BYTES:
                raise SessionDead(DeathReason.PROTOCOL,
                                  f"a reply line exceeds {MAX_LINE_BYTES} bytes")
            if not self._fill(deadline):
                return None

    def drain(self, seconds: float) -> None:
        """Read what arrives within `seconds` (stderr written just before a reply may
        arrive after it: the engine copies the two pipes independently)."""
        deadline = time.monotonic() + seconds
        with contextlib.suppress(TimeoutError, OSError, SessionDead):
            while self._fill(deadline):
                pass

    def _fill(self, deadline: float) -> bool:
        """Read once from the socket and route it; False at end of stream."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        if not _readable(self.sock, remaining):
            raise TimeoutError
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            return False
        self.raw += chunk
        self._route()
        return True

    def _route(self) -> None:
        while self.raw:
            if self.left == 0:
                if len(self.raw) < _HEADER.size:
                    return
                self.kind, self.left = _HEADER.unpack_from(self.raw)
                del self.raw[:_HEADER.size]
                continue
            take = min(self.left, len(self.raw))
            payload = bytes(self.raw[:take])
            del self.raw[:take]
            self.left -= take
            self.total += take
            if self.kind == 1:
                self.stdout += payload
            else:
                self.stderr.feed(payload)
            if self.total > self.cap:
                raise SessionDead(DeathReason.OUTPUT_LIMIT, f"output exceeded {self.cap} bytes")


class DockerSession:
    """One interactive container, labelled with `labels` (ownership and deadline,
    reaper.py). Not thread-safe: one call at a time."""

    def __init__(self, engine: DockerEngine, spec: JobSpec, image: str,
                 labels: dict[str, str]) -> None:
        self.engine = engine
        self.spec = spec
        self.image = image
        self.labels = labels
        self.name = f"bilevel-session-{uuid.uuid4().hex[:12]}"
        self.container: Any = None
        self.volume: Any = None
        self._api: docker.APIClient | None = None
        self._sock: socket.socket | None = None
        self._frames: _Frames | None = None
        self._next_id = 0
        self.dead: SessionDead | None = None
        self.start_seconds = 0.0
        self.log = log.bind(session=self.name)

    def start(self) -> float:
        """Create, attach and start the container; return the seconds it took."""
        started = time.monotonic()
        client = self.engine.client
        try:
            self.volume = client.volumes.create(name=self.name, labels=self.labels)
            kwargs = container_kwargs(self.spec, image=self.image, name=self.name,
                                      volume=self.volume.name, labels=self.labels)
            self.container = client.containers.create(**{**kwargs, "stdin_open": True})
            job = runner_job(self.spec)
            if not self.container.put_archive(VOLUME_TARGET,
                                              archive.pack_job(self.spec.files, job)):
                raise docker.errors.DockerException("could not place the session's files")
            self._api = self.engine.dedicated()
            raw = self._api.attach_socket(self.container.id, params={
                "stdin": 1, "stdout": 1, "stderr": 1, "stream": 1})
            self._sock = getattr(raw, "_sock", raw)
            self._frames = _Frames(self._sock, self.spec.limits.output_bytes)
            self.container.start()
        except _DOCKER_ERRORS as exc:
            self.close()
            raise SandboxUnavailable(f"could not start sandbox session: {exc}") from exc
        self.start_seconds = time.monotonic() - started
        return self.start_seconds

    def call(self, hook: str, args: list[Any], timeout: float) -> Reply:
        """Send one request and wait at most `timeout` seconds for its reply."""
        if self.dead is not None:
            raise self.dead
        if self._sock is None or self._frames is None:
            raise RuntimeError("call() before start()")
        self._next_id += 1
        rid = self._next_id
        started = time.monotonic()
        deadline = started + timeout
        try:
            line = json.dumps({"id": rid, "hook": hook, "args": args}, allow_nan=False)
            self._sock.settimeout(timeout)
            self._sock.sendall(line.encode() + b"\n")
            raw = self._frames.line(deadline)
        except SessionDead as exc:
            self._die(exc)
        except TimeoutError:
            self._die(SessionDead(DeathReason.TIMEOUT, f"{hook} took longer than {timeout:g} s"))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"request arguments are not JSON: {exc}") from exc
        except OSError as exc:
            raw = None
            self.log.info("session stream broke", error=str(exc))
        if raw is None:
            self._die(self._classify_exit())
        return self._parse(raw, rid, time.monotonic() - started)

    def _parse(self, raw: bytes, rid: int, seconds: float) -> Reply:
        reply = parse_reply(raw, rid)
        if isinstance(reply, SessionDead):
            self._die(reply)
        return replace(reply, seconds=seconds)

    def _classify_exit(self) -> SessionDead:
        try:
            state = self.container.wait(timeout=10)
            self.container.reload()
            oom = bool(self.container.attrs["State"].get("OOMKilled"))
        except _DOCKER_ERRORS as exc:
            return SessionDead(DeathReason.SANDBOX_ERROR, f"session vanished: {exc}")
        code = state.get("StatusCode")
        text = self.stderr()
        if oom or (code == 137 and ("MemoryError" in text or "Out of memory" in text)):
            return SessionDead(DeathReason.OOM,
                               f"killed for exceeding memory of {self.spec.limits.memory_bytes}"
                               " bytes", text)
        return SessionDead(DeathReason.DIED, f"the session exited with status {code}", text)

    def _die(self, exc: SessionDead) -> NoReturn:
        """Record the death, kill the container, raise."""
        if not exc.stderr:
            exc.stderr = self.stderr()
        self.dead = exc
        self.log.info("session killed", reason=exc.reason.value, detail=exc.detail)
        self.close()
        raise exc

    def stderr(self, settle_seconds: float = 0.0) -> str:
        """What the container printed to stderr (head and tail), after waiting up to
        `settle_seconds` for output still in flight."""
        if self._frames is None:
            return ""
        if settle_seconds > 0 and self._sock is not None and self.dead is None:
            self._frames.drain(settle_seconds)
        head, tail = self._frames.stderr.head(), self._frames.stderr.tail()
        return head + tail if not tail else f"{head}\n[...]\n{tail}"

    @property
    def alive(self) -> bool:
        return self.dead is None and self.container is not None

    def close(self) -> None:
        """Tear everything down; safe to call twice. The reaper covers what fails here."""
        if self.container is not None:
            # Kill before dropping the stream: removing a container whose output is
            # blocked on a closed attach takes the engine seconds. Keep reading while
            # the kill runs: with the stream full (a flood we stopped reading), the
            # engine's kill waits on it until the client's timeout (60 s).
            stop = threading.Event()
            drainer = threading.Thread(target=_discard, args=(self._sock, stop),
                                       name=f"{self.name}-drain", daemon=True)
            if self._sock is not None:
                drainer.start()
            with contextlib.suppress(*_DOCKER_ERRORS):
                self.container.kill()
            stop.set()
            if drainer.is_alive():
                drainer.join(timeout=2)
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None
        if self._api is not None:
            self._api.close()
            self._api = None
        for obj in (self.container, self.volume):
            if obj is None:
                continue
            try:
                obj.remove(force=True)
            except docker.errors.NotFound:
                pass
            except _DOCKER_ERRORS as exc:
                self.log.warning("session teardown failed; the reaper will retry",
                                 error=str(exc))
        self.container = self.volume = None
        if self.dead is None:
            self.dead = SessionDead(DeathReason.DIED, "the session was closed")

    def __enter__(self) -> DockerSession:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _discard(sock: socket.socket | None, stop: threading.Event) -> None:
    """Read and drop the attach stream until it ends or `stop` is set."""
    if sock is None:
        return
    with contextlib.suppress(OSError, ValueError):
        while not stop.is_set():
            readable = _readable(sock, 0.1)
            if readable and not sock.recv(1 << 16):
                return
