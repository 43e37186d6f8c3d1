"""The controller's grpc.aio server: services, health, reflection, auth, TLS, shutdown.

Blocking work (Docker, SQLite) runs in threads; the event loop only moves messages.
Runs a previous controller left running resume as soon as the Docker engine answers.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import signal
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from controller.api import reflection
from controller.api.admission import Admission, ByteBudget, MemoryGiveBack, StreamBudget
from controller.api.audit_interceptor import AuditInterceptor
from controller.api.auth import Authenticator
from controller.api.edge import EdgeInterceptor, max_concurrent_rpcs, server_options
from controller.api.events import EventHub
from controller.api.gen.bilevel.v1 import (
    principals_pb2,
    principals_pb2_grpc,
    runs_pb2,
    runs_pb2_grpc,
    sandbox_pb2,
    sandbox_pb2_grpc,
)
from controller.api.memory_service import MemoryServicer
from controller.api.principals_service import PrincipalServicer
from controller.api.private_socket import LOCK_FILE, PrivateSocket
from controller.api.runs_service import RunServicer
from controller.api.sandbox_service import SandboxServicer
from controller.audit.chain import AUDIT_DIR
from controller.audit.log import AuditLog
from controller.config import ConfigError, ServerConfig, TlsConfig
from controller.research.deletion import Janitor, RunDeleter
from controller.research.engine import LazyBackend
from controller.research.manager import ManagerConfig, RunManager
from controller.sandbox.backend_config import SandboxUnavailable
from controller.store import deletion
from controller.store.artifacts import ArtifactStore
from controller.store.directory import Directory
from controller.store.disk import DiskBudget
from controller.store.memory import MemoryStore
from controller.store.principals import PrincipalStore
from controller.store.principals_file import PrincipalsFile, PrincipalsFileError
from controller.store.resources import RunResources
from controller.store.runs import RunStore

log = structlog.get_logger(__name__)

SANDBOX_SERVICE = sandbox_pb2.DESCRIPTOR.services_by_name["SandboxService"].full_name
RUN_SERVICE = runs_pb2.DESCRIPTOR.services_by_name["RunService"].full_name
MEMORY_SERVICE = runs_pb2.DESCRIPTOR.services_by_name["MemoryService"].full_name
PRINCIPAL_SERVICE = principals_pb2.DESCRIPTOR.services_by_name["PrincipalService"].full_name
EXECUTE = f"/{SANDBOX_SERVICE}/Execute"
ENGINE_RETRY_SECONDS = 5.0
DEFAULT_THREADS = 32  # an Execute request may carry up to 256 MiB of files


# Why an in-process controller's runs paused when its command stopped.
PAUSED_ON_EXIT = "interrupted: the command that ran it stopped (Ctrl-C)"


def _credentials(tls: TlsConfig) -> grpc.ServerCredentials:
    ca = tls.client_ca_file.read_bytes() if tls.client_ca_file else None
    return grpc.ssl_server_credentials(
        [(tls.key_file.read_bytes(), tls.cert_file.read_bytes())],
        root_certificates=ca, require_client_auth=ca is not None)


class ControllerServer:
    def __init__(self, config: ServerConfig) -> None:
        config.validate()
        self.config = config
        self._lock_fd = _lock_state_dir(config.state_dir)
        # Its owner's listener (a call over it without a token is LOCAL, auth.py).
        self.socket = PrivateSocket.for_state_dir(config.state_dir)
        self.store = RunStore(config.state_dir / "bilevel.sqlite3")
        # Who may call: read afresh on every call, so a revocation takes effect at once.
        self.principals = Directory(PrincipalStore(config.state_dir / "bilevel.sqlite3"),
                                    _principals_file(config))
        self.auth = Authenticator(config.tokens, self.principals, config.auth.certificates)
        # Every call recorded before it acts (controller/api/audit_interceptor.py).
        self.audit = AuditLog(config.state_dir / AUDIT_DIR)
        self.artifacts = ArtifactStore(config.state_dir / "runs")
        # Slots shared between principals within their quotas (sandbox/fair_share.py).
        self.engine = LazyBackend(config.executor, config.backend, config.quotas)
        self.manager = RunManager(self.store, self.artifacts, self.engine,
                                  ManagerConfig(max_active_runs=config.max_active_runs,
                                                llm=config.llm, caps=config.caps,
                                                disk=DiskBudget.of(
                                                    config.state_dir,
                                                    config.state_dir_max_bytes),
                                                quotas=config.quotas,
                                                shared_memory=config.shared_memory))
        # What a crash left half done: claims of runs never created, folders of runs
        # deleted or never created. Safe now: this process holds the state dir and no
        # create is in flight.
        RunResources(self.store).drop_dangling()
        deletion.remove_orphan_files(self.artifacts.root, self.store)
        self.deleter = RunDeleter(self.store, self.artifacts, self.engine.get,
                                  self.manager.cancel,
                                  lambda run_id: run_id in self.manager.active_ids())
        self.janitor = Janitor(self.deleter, config.retention)
        self._janitor_task: asyncio.Task[None] | None = None
        self.health = health.aio.HealthServicer()
        self.port = 0
        self._server: grpc.aio.Server | None = None
        self._sandbox: SandboxServicer | None = None
        self._engine_task: asyncio.Task[None] | None = None

    async def start(self) -> int:
        """Bind and start serving: the private Unix socket, and TCP where `listen` asks
        and calls authenticate. Returns the TCP port (--listen HOST:0 picks one), 0 when
        only the socket is served."""
        loop = asyncio.get_running_loop()
        # asyncio.to_thread's pool: store reads, run creation and cancels (which wait for
        # the loop thread). The default (cores + 4) is too small on a 2-core host.
        loop.set_default_executor(ThreadPoolExecutor(max_workers=DEFAULT_THREADS,
                                                     thread_name_prefix="controller"))
        hub = EventHub(loop)
        self.store.subscribe(hub.notify)
        # The edge checks tokens and admits (streams, Execute places, body bytes) before
        # reading a body, then size caps and parsing. grpc's own cap on concurrent calls
        # leaves room for unary calls beside every stream the edge allows.
        admission = Admission(self.engine.config.slots, self.config.execute_queue)
        # The edge first: it resolves the principal the audit records (audit_interceptor.py).
        server = grpc.aio.server(interceptors=[self.edge(admission),
                                               AuditInterceptor(self.audit)],
                                 options=server_options(),
                                 maximum_concurrent_rpcs=max_concurrent_rpcs(
                                     self.config.max_streams))
        self._sandbox = SandboxServicer(self.engine, self.config.default_limits,
                                        self.config.caps, admission)
        sandbox_pb2_grpc.add_SandboxServiceServicer_to_server(  # type: ignore[no-untyped-call]
            self._sandbox, server)
        runs_pb2_grpc.add_RunServiceServicer_to_server(  # type: ignore[no-untyped-call]
            RunServicer(self.manager, self.store, self.artifacts, hub, self.deleter), server)
        runs_pb2_grpc.add_MemoryServiceServicer_to_server(  # type: ignore[no-untyped-call]
            MemoryServicer(MemoryStore(self.store), self.config.shared_memory), server)
        principals_pb2_grpc.add_PrincipalServiceServicer_to_server(  # type: ignore[no-untyped-call]
            PrincipalServicer(self.principals), server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        # v1 and v1alpha, with the proto comments (grpcurl describe shows them).
        reflection.enable(server, (SANDBOX_SERVICE, RUN_SERVICE, MEMORY_SERVICE,
                                   PRINCIPAL_SERVICE,
                                   health_pb2.DESCRIPTOR.services_by_name["Health"].full_name))
        # ConfigError: TCP without authentication
        tcp = self.config.tcp_address(stored_principals=self.principals.any())
        try:
            server.add_insecure_port(self.socket.address)
            self.socket.bound()
            if tcp is not None and self.config.tls is not None:
                self.port = server.add_secure_port(tcp, _credentials(self.config.tls))
            elif tcp is not None:
                self.port = server.add_insecure_port(tcp)
            await server.start()
        except BaseException:
            self.socket.close()
            raise
        self._server = server
        _record_address(self._lock_fd, self.socket.address)
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self.health.set(RUN_SERVICE, health_pb2.HealthCheckResponse.SERVING)
        await self.health.set(SANDBOX_SERVICE, health_pb2.HealthCheckResponse.NOT_SERVING)
        self._engine_task = asyncio.create_task(self._connect_engine())
        self._janitor_task = asyncio.create_task(self._sweep_forever())
        log.info("controller listening", socket=str(self.socket.path),
                 tcp=tcp.rsplit(":", 1)[0] if tcp else "none", port=self.port,
                 tls=tcp is not None and self.config.tls is not None,
                 mtls=bool(tcp and self.config.tls and self.config.tls.client_ca_file),
                 state_dir=str(self.config.state_dir))
        return self.port

    def edge(self, admission: Admission) -> EdgeInterceptor:
        """The interceptor every call passes (controller/api/edge.py)."""
        c = self.config
        return EdgeInterceptor(
            self.auth, StreamBudget(c.max_streams, c.max_streams_per_client),
            ByteBudget(c.max_request_bytes_in_flight, on_release=MemoryGiveBack()),
            {EXECUTE: admission})

    async def _connect_engine(self) -> None:
        """Reach Docker (reaping orphans), then resume unfinished runs; retry while down."""
        while True:
            try:
                await asyncio.to_thread(self.engine.get)
                break
            except SandboxUnavailable as exc:
                log.warning("sandbox unavailable; retrying", error=str(exc),
                            retry_seconds=ENGINE_RETRY_SECONDS)
                await asyncio.sleep(ENGINE_RETRY_SECONDS)
        await self.health.set(SANDBOX_SERVICE, health_pb2.HealthCheckResponse.SERVING)
        if self.config.one_shot:  # its runs go on only when asked (`bilevel resume`)
            return
        resumed = await asyncio.to_thread(self.manager.resume_all)
        if resumed:
            log.info("resumed runs", runs=resumed)

    async def _sweep_forever(self) -> None:
        """Retention and the engine sweep (research/deletion.py's Janitor), now and then
        every retention.sweep_seconds; a failed sweep is logged, the next one retries."""
        while True:
            try:
                await asyncio.to_thread(self.janitor.sweep)
            except Exception:
                log.exception("clean-up sweep failed; the next one retries")
            await asyncio.sleep(self.config.retention.sweep_seconds)

    async def stop(self) -> None:
        """Graceful: refuse new work, pause runs (they resume on restart), let calls in
        flight finish within the grace period, then kill and remove what is left."""
        log.info("shutting down", grace_seconds=self.config.shutdown_grace_seconds)
        await self.health.enter_graceful_shutdown()
        if self._engine_task is not None:
            self._engine_task.cancel()
        if self._janitor_task is not None:
            self._janitor_task.cancel()
        await asyncio.to_thread(self.manager.shutdown, 30.0,
                                PAUSED_ON_EXIT if self.config.one_shot else "")
        if self._server is not None:
            await self._server.stop(self.config.shutdown_grace_seconds)
        self.socket.close()
        if self._sandbox is not None:
            await asyncio.to_thread(self._sandbox.close)
        await asyncio.to_thread(self.janitor.close)  # a sweep in flight ends first
        self.engine.close()
        self.store.close()
        self.principals.store.close()
        self.audit.close()
        os.close(self._lock_fd)
        log.info("stopped")


def _principals_file(config: ServerConfig) -> PrincipalsFile | None:
    """auth.principals_file, read and checked now: a bad file stops the start."""
    if config.auth.principals_file is None:
        return None
    try:
        return PrincipalsFile(config.auth.principals_file)
    except PrincipalsFileError as exc:
        raise ConfigError(str(exc)) from None


def _lock_state_dir(state_dir: Path) -> int:
    """One controller per state dir: two would both resume the same runs. A new state
    dir is made 0700 (it holds every run); the lock file, which says where the private
    socket is, is its owner's only (0600)."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = stat.S_IMODE(state_dir.stat().st_mode)
    if mode & 0o077:
        log.warning("the state dir is open to other users: they can read its runs; "
                    f"`chmod 700 {state_dir}` closes it", state_dir=str(state_dir),
                    mode=oct(mode))
    fd = os.open(state_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    os.fchmod(fd, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").partition("\n")[0].strip()
        os.close(fd)
        raise ConfigError(f"state dir {state_dir} is in use by another controller "
                          f"(pid {holder or '?'}); connect to it with --server, or pass "
                          "another --state-dir") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _record_address(fd: int, socket_address: str) -> None:
    """Next to the pid in the lock file: the private socket, where its owner's commands
    on this host (`bilevel runs` and friends) reach this controller instead of failing."""
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n{socket_address}\n".encode(), 0)


async def serve(config: ServerConfig, port_file: Path | None = None) -> None:
    """Run until SIGINT or SIGTERM, then shut down gracefully."""
    server = ControllerServer(config)
    port = await server.start()
    if port_file is not None:
        port_file.write_text(f"{port}\n")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop()
