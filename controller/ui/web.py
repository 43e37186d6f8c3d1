"""The page's HTTP server: stdlib ThreadingHTTPServer in a thread, GET only.

Each request thread hands its coroutine to the asyncio loop that owns the gRPC client
and waits for it. Defences, since the page shows hostile text and the controller's
token stands behind it: every JSON route needs this process's key (KEY_HEADER; a random
secret printed once in the page's URL, so another user of the same host, who can reach
a loopback port too, reads nothing), a Content-Security-Policy that allows only this
origin's script (no inline script, so markup that slipped into the DOM could not run),
a Host check on a loopback bind (a DNS-rebinding page cannot read the API), caps on
requests in flight, and nothing but the fixed static files (the package's, which hold
no data: served without the key) and the JSON routes below.

The event long-poll (`/api/runs/RUN/events`, up to MAX_WAIT_SECONDS each) has places of
its own, in all and per client address (UiLimits), apart from the other requests': polls
never take the places of the page, the runs list or an artifact. A request over a bound
is answered at once, 429 (this client's polls) or 503, with Retry-After.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import secrets
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import grpc
import structlog

from controller.api.errors import describe
from controller.ui.backend import MAX_WAIT_SECONDS, Backend, BadRequest, NotFound

log = structlog.get_logger(__name__)

SCRIPTS = ("dom.js", "plots.js", "knobplots.js", "trialtable.js", "compare.js", "app.js")
STATIC = {"index.html": "text/html; charset=utf-8",
          **{name: "text/javascript; charset=utf-8" for name in SCRIPTS},
          "app.css": "text/css; charset=utf-8"}
RETRY_AFTER_SECONDS = 2
KEY_HEADER = "X-Bilevel-Key"  # the page's script sends the key it took from its URL
KEY_REFUSED = ("this page needs the key `bilevel ui` printed: open the URL it printed "
               "(http://HOST:PORT/#key=...)")


@dataclass(frozen=True)
class UiLimits:
    requests: int = 16  # requests other than event polls, in flight at once
    polls: int = 16  # event long-polls in flight, all clients
    polls_per_client: int = 4  # ... from one client address (a page runs one at a time)


class PollSlots:
    """Event long-polls in flight, in all and per client address (thread-safe)."""

    def __init__(self, total: int, per_client: int) -> None:
        self.total, self.per_client = total, per_client
        self.open: dict[str, int] = {}
        self._lock = threading.Lock()

    def enter(self, client: str) -> tuple[int, str] | None:
        """None when admitted, else the HTTP status and why."""
        with self._lock:
            held = self.open.get(client, 0)
            if held >= self.per_client:
                return 429, (f"this client has {held} event polls open, the most one "
                             f"client may; retry after {RETRY_AFTER_SECONDS} s")
            if sum(self.open.values()) >= self.total:
                return 503, (f"all {self.total} event polls are open; retry after "
                             f"{RETRY_AFTER_SECONDS} s")
            self.open[client] = held + 1
            return None

    def leave(self, client: str) -> None:
        with self._lock:
            self.open[client] -= 1
            if not self.open[client]:
                del self.open[client]
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "img-src 'self'; connect-src 'self'; base-uri 'none'; "
                               "form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
GRPC_HTTP = {grpc.StatusCode.NOT_FOUND: 404, grpc.StatusCode.INVALID_ARGUMENT: 400}

Route = Callable[[dict[str, str]], Coroutine[Any, Any, Any]]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class UiServer:
    def __init__(self, backend: Backend, loop: asyncio.AbstractEventLoop, host: str,
                 port: int, limits: UiLimits = UiLimits()) -> None:
        self.backend = backend
        self.loop = loop
        self.key = secrets.token_urlsafe(32)  # this process's; in `url` only
        self.static = {name: (resources.files("controller.ui") / "static" / name).read_bytes()
                       for name in STATIC}
        self.slots = threading.BoundedSemaphore(limits.requests)
        self.polls = PollSlots(limits.polls, limits.polls_per_client)
        self.httpd = ThreadingHTTPServer((host, port), _handler(self))
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{self.port}/#key={self.key}"  # printed once, to its user
        # On loopback only these names may reach it (DNS rebinding); bound wider, the
        # network can reach it anyway and any name is accepted.
        self.allowed_hosts: set[str] | None = (
            {f"{h}:{self.port}" for h in ("127.0.0.1", "localhost", "[::1]", shown)}
            if is_loopback(host) else None)
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="bilevel-ui",
                                       daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(10)

    def keyed(self, given: str | None) -> bool:
        """Whether a request carries this process's key (constant-time compare)."""
        return given is not None and hmac.compare_digest(given.encode(), self.key.encode())

    def enter(self, poll: bool, client: str) -> tuple[int, str] | None:
        """Take a place for a request (an event poll or another); None when admitted,
        else the HTTP status and why."""
        if poll:
            return self.polls.enter(client)
        if not self.slots.acquire(blocking=False):
            return 503, f"too many requests in flight; retry after {RETRY_AFTER_SECONDS} s"
        return None

    def leave(self, poll: bool, client: str) -> None:
        if poll:
            self.polls.leave(client)
        else:
            self.slots.release()

    def call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Run a backend coroutine on the client's loop from a request thread."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(MAX_WAIT_SECONDS + 90)

    async def _sync(self, value: Callable[[], Any]) -> Any:
        return value()

    def route(self, path: str, query: dict[str, str]) -> Coroutine[Any, Any, Any] | None:
        """The coroutine answering GET `path`, or None (404)."""
        parts = [unquote(p) for p in path.strip("/").split("/")]
        b = self.backend
        match parts:
            case ["api", "runs"]:
                return b.runs()
            case ["api", "runs", run_id]:
                return b.run(run_id)
            case ["api", "runs", run_id, "events"]:
                return b.events(run_id, _int(query, "after", 0), _float(query, "wait", 0.0))
            case ["api", "runs", run_id, "artifact"]:
                return b.artifact(run_id, query.get("name", ""))
            case ["api", "runs", run_id, "curves"]:  # each trial's reported curve
                return b.curves(run_id)
            case ["api", "runs", run_id, "trials"]:
                return b.trials(run_id)
            case ["api", "runs", run_id, "export"]:
                return b.export(run_id, query.get("format", "csv"))
            case ["api", "runs", run_id, "compare"]:
                return b.compare(run_id, _int(query, "a", -1), _int(query, "b", -1))
            case ["api", "ablations"]:
                return self._sync(b.ablations)
            case ["api", "ablations", ablation_id]:
                return self._sync(lambda: b.ablation(ablation_id))
        return None


def is_poll(path: str) -> bool:
    """GET `path` is the event long-poll (/api/runs/RUN/events)."""
    parts = path.strip("/").split("/")
    return len(parts) == 4 and parts[:2] == ["api", "runs"] and parts[3] == "events"


def _int(query: dict[str, str], name: str, default: int) -> int:
    try:
        return int(query.get(name, default))
    except ValueError:
        raise BadRequest(f"{name}: not an integer") from None


def _float(query: dict[str, str], name: str, default: float) -> float:
    try:
        return float(query.get(name, default))
    except ValueError:
        raise BadRequest(f"{name}: not a number") from None


def _handler(ui: UiServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "bilevel-ui"
        timeout = 60  # seconds a connection may idle: a stalled client frees its thread
        sys_version = ""

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("ui request", line=format % args)

        def _send(self, code: int, body: bytes, content_type: str) -> None:
            self.send_response(code)
            if code in (429, 503):
                self.send_header("Retry-After", str(RETRY_AFTER_SECONDS))
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for key, value in SECURITY_HEADERS.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)

        def _json(self, code: int, value: Any) -> None:
            self._send(code, json.dumps(value, allow_nan=False).encode(),
                       "application/json; charset=utf-8")

        def _refuse(self) -> None:
            self._json(405, {"error": "read-only: only GET is served"})

        do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _refuse

        def do_GET(self) -> None:
            host = self.headers.get("Host", "")
            if ui.allowed_hosts is not None and host not in ui.allowed_hosts:
                self._json(403, {"error": f"Host {host[:100]!r} is not this server's "
                                          "loopback address"})
                return
            path = urlsplit(self.path).path
            if path.startswith("/api/") and not ui.keyed(self.headers.get(KEY_HEADER)):
                self._json(403, {"error": KEY_REFUSED})
                return
            poll = is_poll(path)
            client = str(self.client_address[0])
            refused = ui.enter(poll, client)
            if refused is not None:
                self._json(refused[0], {"error": refused[1]})
                return
            try:
                self._get()
            finally:
                ui.leave(poll, client)

        def _get(self) -> None:
            url = urlsplit(self.path)
            if url.path in ("/", "/index.html"):
                self._send(200, ui.static["index.html"], STATIC["index.html"])
                return
            name = url.path.removeprefix("/static/")
            if url.path.startswith("/static/") and name in STATIC:
                self._send(200, ui.static[name], STATIC[name])
                return
            query = {k: v[0] for k, v in parse_qs(url.query, max_num_fields=10).items()}
            try:
                coro = ui.route(url.path, query)
                if coro is None:
                    self._json(404, {"error": f"no such page: {url.path[:200]}"})
                    return
                self._json(200, ui.call(coro))
            except BadRequest as exc:
                self._json(400, {"error": str(exc)})
            except NotFound as exc:
                self._json(404, {"error": str(exc)})
            except grpc.aio.AioRpcError as exc:
                self._json(GRPC_HTTP.get(exc.code(), 502),
                           {"error": f"controller: {describe(exc)}"[:2000]})
            except TimeoutError:
                self._json(504, {"error": "the controller did not answer in time"})
            except ValueError as exc:  # parse_qs: too many fields
                self._json(400, {"error": str(exc)[:500]})
            except Exception as exc:
                log.exception("ui request failed", path=url.path[:200])
                self._json(500, {"error": f"{type(exc).__name__}: {exc}"[:500]})

    return Handler
