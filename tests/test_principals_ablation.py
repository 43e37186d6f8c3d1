"""Ablations are client-side (<state>/ablations/), and their runs are the caller's: an
ablation records the principal that drives it, and no other principal drives it on
(its runs would be NOT_FOUND to that principal), against a real server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from controller.analysis import ablation
from controller.analysis.ablation import AblationSpec
from controller.analysis.runner import Runner
from controller.api.client import Client, ClientConfig
from controller.config import ConfigError
from tests.principals_harness import cluster, prepare


def _drive(address: str, token: str, state_dir: Path, spec: AblationSpec) -> None:
    async def main() -> None:
        async with Client(ClientConfig(address=address, token=token)) as client:
            await Runner(client, state_dir, spec, 1, lambda _line: None).run()
    asyncio.run(main())


def test_deny_another_principal_resuming_an_ablation(tmp_path: Path) -> None:
    tokens = prepare(tmp_path / "state")
    mine = tmp_path / "client"  # the driver's own state dir, where ablation.json lives
    spec = AblationSpec(id="abl-test-000001", task="surrogate", repeats=0, trials=1)
    ablation.save(mine, spec)
    with cluster(tmp_path / "state") as (server, _):
        _drive(server.address, tokens["alice"], mine, ablation.load(mine, spec.id))
        assert ablation.load(mine, spec.id).principal == "alice"
        with pytest.raises(ConfigError, match="belongs to principal 'alice'"):
            _drive(server.address, tokens["bob"], mine, ablation.load(mine, spec.id))
        _drive(server.address, tokens["alice"], mine, ablation.load(mine, spec.id))
    assert ablation.load(mine, spec.id).principal == "alice"


def test_sensitivity_without_the_claim_another_principal_drives_it_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Twin: with the principal check taken out, bob's driver goes on with alice's
    ablation (whose runs it cannot see)."""
    async def no_claim(self: Runner) -> None:
        return None

    tokens = prepare(tmp_path / "state")
    mine = tmp_path / "client"
    spec = AblationSpec(id="abl-test-000002", task="surrogate", repeats=0, trials=1,
                        principal="alice")
    ablation.save(mine, spec)
    monkeypatch.setattr(Runner, "_claim", no_claim)
    with cluster(tmp_path / "state") as (server, _):
        _drive(server.address, tokens["bob"], mine, ablation.load(mine, spec.id))
    assert ablation.load(mine, spec.id).finished_at > 0
