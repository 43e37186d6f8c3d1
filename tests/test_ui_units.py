"""`bilevel ui`'s HTTP edge without a controller: a real server on loopback refuses what
it must before any gRPC call (requests without the page's key, other hosts, writes,
unknown paths, artifact names outside the documented set), ships its own page under a
strict CSP, and caps hostile values."""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest

from controller.api.client import Client
from controller.ui import backend
from controller.ui.backend import Backend, clip
from controller.ui.importance import importance
from controller.ui.web import KEY_HEADER, SCRIPTS, UiServer


@pytest.fixture
def ui(tmp_path: Path) -> Iterator[UiServer]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    # No client: every request here must be answered before one would be used.
    server = UiServer(Backend(cast(Client, None), tmp_path), loop, "127.0.0.1", 0)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def _request(ui: UiServer, method: str, path: str, host: str | None = None,
             key: str | None = "the page's") -> tuple[int, dict[str, str], bytes]:
    """A request with the page's key (as its script sends it), another `key`, or none."""
    conn = http.client.HTTPConnection("127.0.0.1", ui.port, timeout=30)
    headers = {"Host": host} if host is not None else {}
    if key is not None:
        headers[KEY_HEADER] = ui.key if key == "the page's" else key
    conn.request(method, path, headers=headers)
    response = conn.getresponse()
    body = response.read()
    conn.close()
    return response.status, dict(response.getheaders()), body


def _error(body: bytes) -> str:
    value: Any = json.loads(body)
    return str(value["error"])


def test_the_page_and_its_script_come_from_the_package_under_a_strict_policy(
        ui: UiServer) -> None:
    status, headers, page = _request(ui, "GET", "/")
    assert status == 200
    policy = headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "default-src 'none'" in policy
    assert "unsafe-inline" not in policy and headers["X-Frame-Options"] == "DENY"
    for name in SCRIPTS:
        assert f'<script src="/static/{name}" defer>'.encode() in page
        status, _, script = _request(ui, "GET", f"/static/{name}")
        # Text goes in as text nodes (dom.js's el and svgEl, which the others call).
        assert status == 200 and (name != "dom.js" or b"createTextNode" in script)
        # No markup is built from strings and nothing is fetched from another origin.
        assert b"innerHTML" not in script and b"http://" not in script.replace(
            b'"http://www.w3.org/2000/svg"', b"") and b"https://" not in script
    assert b"http" not in page
    assert _request(ui, "GET", "/static/../backend.py")[0] == 404


def test_deny_the_data_without_the_key_printed_in_the_pages_url(ui: UiServer) -> None:
    """Another user of the host reaches the loopback port too; without the key (printed
    once to whoever started `bilevel ui`) it gets the page's static files only."""
    assert ui.url == f"http://127.0.0.1:{ui.port}/#key={ui.key}" and len(ui.key) >= 32
    for path in ("/api/runs", "/api/runs/run-1", "/api/runs/run-1/events?wait=0",
                 "/api/ablations", "/api/runs/run-1/trials", "/api/runs/run-1/export",
                 "/api/runs/run-1/compare?a=1&b=2"):
        status, _, body = _request(ui, "GET", path, key=None)
        assert status == 403 and "open the URL it printed" in _error(body)
        assert _request(ui, "GET", path, key=ui.key[:-1] + "A")[0] == 403
    assert _request(ui, "GET", "/", key=None)[0] == 200  # the package's files: no data
    assert _request(ui, "GET", "/static/app.js", key=None)[0] == 200
    assert _request(ui, "GET", "/api/ablations")[0] == 200  # with the key


def test_other_hosts_writes_and_unknown_names_are_refused(ui: UiServer) -> None:
    status, _, body = _request(ui, "GET", "/api/runs", host="evil.example:80")
    assert status == 403 and "evil.example" in _error(body)
    for method in ("POST", "PUT", "DELETE"):
        status, _, body = _request(ui, method, "/api/runs/run-1")
        assert status == 405 and "read-only" in _error(body)
    assert _request(ui, "GET", "/api/nothing")[0] == 404
    status, _, body = _request(ui, "GET", "/api/runs/run-1/artifact?name=../../etc/passwd")
    assert status == 400 and _error(body).startswith("name:")
    status, _, body = _request(ui, "GET", "/api/runs/a%20b/events")
    assert status == 400 and _error(body).startswith("run:")
    status, _, body = _request(ui, "GET", "/api/runs/run-1/events?after=x")
    assert status == 400 and _error(body).startswith("after:")
    status, _, body = _request(ui, "GET", "/api/runs/run-1/export?format=xlsx")
    assert status == 400 and _error(body).startswith("format:")
    status, _, body = _request(ui, "GET", "/api/runs/run-1/compare?a=1")
    assert status == 400 and _error(body).startswith("a, b:")
    assert _request(ui, "GET", "/api/runs/a%20b/trials")[0] == 400


def test_ablations_are_read_from_the_state_dir_and_a_bad_file_is_skipped(
        ui: UiServer, tmp_path: Path) -> None:
    good = tmp_path / "ablations" / "abl-1" / "ablation.json"
    good.parent.mkdir(parents=True)
    good.write_text(json.dumps({"id": "abl-1", "task": "surrogate", "repeats": 1,
                                "secret": "not shown", "cells": {"A/0": {"run_id": "r"}}}))
    bad = tmp_path / "ablations" / "abl-2" / "ablation.json"
    bad.parent.mkdir(parents=True)
    bad.write_text("{not json")
    status, _, body = _request(ui, "GET", "/api/ablations")
    listed = json.loads(body)["ablations"]
    assert status == 200 and [a["id"] for a in listed] == ["abl-1"]
    assert "secret" not in listed[0]
    assert _request(ui, "GET", "/api/ablations/abl-2")[0] == 404


def test_clip_caps_strings_lists_and_depth() -> None:
    deep: Any = "x"
    for _ in range(50):
        deep = [deep]
    value = clip({"text": "a" * 10_000, "items": list(range(2000)), "deep": deep})
    assert len(value["text"]) < backend.MAX_STRING + 100
    assert value["text"].endswith(f"[{10_000 - backend.MAX_STRING} more characters not shown]")
    assert len(value["items"]) == backend.MAX_ITEMS + 1
    assert value["items"][-1] == f"[{2000 - backend.MAX_ITEMS} more items not shown]"
    depth, node = 0, value["deep"]
    while isinstance(node, list):
        depth, node = depth + 1, node[0]
    assert depth < backend.MAX_DEPTH and node == "[nested too deep]"
    assert len(json.dumps(value)) < 60_000


def test_importance_ranks_the_knob_that_drives_the_metric_and_calls_noise_noise() -> None:
    """40 trials: the metric follows LR (plus noise); SEED is noise alone; WIDTH never
    moves. Fewer than MIN_TRIALS measured trials get no share at all."""
    rng = np.random.default_rng(0)
    points = []
    for _ in range(40):
        lr, seed = float(10 ** rng.uniform(-4, -1)), int(rng.integers(0, 4))
        points.append(({"LR": lr, "SEED": seed, "WIDTH": 64},
                       (np.log10(lr) + 2.5) ** 2 + float(rng.normal(0, 0.1))))
    shares = {k["name"]: k for k in importance(points, ["LR", "SEED", "WIDTH"])["knobs"]}
    assert shares["LR"]["share"] > 0.5 and shares["LR"]["p"] < 0.001
    assert shares["SEED"]["share"] < 0.1 and shares["SEED"]["note"].startswith("could be noise")
    assert shares["WIDTH"]["share"] is None and shares["WIDTH"]["note"] == "never varied"
    few = importance(points[:7], ["LR"])
    assert few["knobs"] == [] and few["note"].startswith("too few measured trials")
