"""`bilevel ui`'s event long-polls cannot take the page's other requests' places (issue
19, part 5): a real controller on loopback with a run left RUNNING in its store (no
engine: no event comes, so each poll waits its full time), the page's server in front
of it, and one client opening 16 long polls."""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from controller.api.client import Client, ClientConfig
from controller.ui.backend import Backend
from controller.ui.web import KEY_HEADER, UiServer
from tests.test_api_harness import serving
from tests.test_api_streams import NO_DOCKER, RUN, running_run

POLL = f"/api/runs/{RUN}/events?after=1&wait=6"
ATTACK = 16  # the page server's places for other requests (UiLimits.requests)


@contextmanager
def page_server(address: str, state_dir: Path,
                factory: Callable[..., UiServer] = UiServer) -> Iterator[UiServer]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def connect() -> Client:
        return Client(ClientConfig(address=address))

    client = asyncio.run_coroutine_threadsafe(connect(), loop).result(30)
    ui = factory(Backend(client, state_dir), loop, "127.0.0.1", 0)
    ui.start()
    try:
        yield ui
    finally:
        ui.stop()
        asyncio.run_coroutine_threadsafe(client.close(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def get(ui: UiServer, path: str, source: str = "127.0.0.1") -> tuple[int, dict[str, str], Any]:
    conn = http.client.HTTPConnection("127.0.0.1", ui.port, timeout=60,
                                      source_address=(source, 0))
    conn.request("GET", path, headers={KEY_HEADER: ui.key})
    response = conn.getresponse()
    body = json.loads(response.read())
    conn.close()
    return response.status, dict(response.getheaders()), body


def until(check: Callable[[], tuple[int, dict[str, str], Any]], status: int,
          polls: list[Future[Any]]) -> tuple[int, dict[str, str], Any]:
    """`check` again until it answers `status`, while the polls are still waiting."""
    while True:
        got = check()
        if got[0] == status or all(p.done() for p in polls):
            return got
        time.sleep(0.05)


def waiting(ui: UiServer, count: int, polls: list[Future[Any]]) -> None:
    """Until `count` polls are in flight at the page's server."""
    while sum(ui.polls.open.values()) < count and not all(p.done() for p in polls):
        time.sleep(0.05)


def test_deny_long_polls_of_one_client_take_the_pages_places(tmp_path: Path) -> None:
    running_run(tmp_path)
    with serving(tmp_path, None, docker_url=NO_DOCKER) as server, \
            page_server(server.address, tmp_path) as ui, ThreadPoolExecutor(24) as pool:
        held = [pool.submit(get, ui, POLL) for _ in range(ATTACK)]
        waiting(ui, 4, held)
        status, headers, body = get(ui, POLL)
        assert status == 429 and headers["Retry-After"] == "2"
        assert "this client has 4 event polls open" in body["error"]
        # Every other request of the same client is still served at once.
        assert get(ui, "/api/runs")[0] == 200
        assert get(ui, f"/api/runs/{RUN}")[0] == 200
        # Other addresses get the rest of the polls, then a 503 naming the bound.
        others = [pool.submit(get, ui, POLL, f"127.0.0.{i}") for i in (2, 3, 4)
                  for _ in range(4)]
        waiting(ui, 16, others)
        status, headers, body = get(ui, POLL, "127.0.0.9")
        assert status == 503 and headers["Retry-After"] == "2"
        assert "all 16 event polls are open" in body["error"]
        assert get(ui, "/api/runs", "127.0.0.9")[0] == 200
        answered = [p.result(60) for p in held + others]
    assert [s for s, _, _ in answered].count(200) == 16  # 4 + 12 waited and were answered
    assert {s for s, _, _ in answered} <= {200, 429}


class SharedPlaces(UiServer):
    """The page's server with the long-poll bound weakened away: polls take the same
    places as every other request. Counts the polls it admitted, so the test probes
    only once all of them hold their places (a probe that raced a poll's arrival took
    that poll's place, and the probe then always fit)."""

    polls_in = 0

    def enter(self, poll: bool, client: str) -> tuple[int, str] | None:
        refused = super().enter(False, client)
        if poll and refused is None:
            type(self).polls_in += 1
        return refused

    def leave(self, poll: bool, client: str) -> None:
        super().leave(False, client)


def test_sensitivity_without_their_own_bound_long_polls_shut_out_the_page(
        tmp_path: Path) -> None:
    running_run(tmp_path)
    with serving(tmp_path, None, docker_url=NO_DOCKER) as server, \
            page_server(server.address, tmp_path, SharedPlaces) as ui, \
            ThreadPoolExecutor(ATTACK) as pool:
        # Longer polls: all 16 must be held at once even when a busy host is slow to
        # open them.
        SharedPlaces.polls_in = 0
        held = [pool.submit(get, ui, POLL.replace("wait=6", "wait=20"))
                for _ in range(ATTACK)]
        while SharedPlaces.polls_in < ATTACK and not all(p.done() for p in held):
            time.sleep(0.05)
        status, _, body = until(lambda: get(ui, "/api/runs"), 503, held)
        assert status == 503, "the runs list was served beside 16 long polls"
        assert "too many requests in flight" in body["error"]
        for poll in held:
            poll.result(60)
