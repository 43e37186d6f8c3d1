"""The scorer's checkpoint helper (trainer/checkpoint.py) against hostile phase-1 files:
a pickle whose __reduce__ runs code, a file over the size cap or a zip that unpacks past
it, entries that are not plain tensors, extra or missing keys, wrong shapes or dtypes,
non-finite values. Each `test_deny_*` has a twin that switches that one check off
(monkeypatch) and shows the hostile file getting through. The last test runs the helper
in the sandbox image, as a task's scorer would, on a real container."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from controller.sandbox.backend import SandboxBackend
from controller.sandbox.spec import JobSpec, Limits, Status
from trainer import checkpoint
from trainer.checkpoint import CheckpointError, load_state_dict


class Net(torch.nn.Module):
    """The task's own model class, built by the trusted scorer."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)
        self.norm = torch.nn.LayerNorm(3)


class Forge:
    """A pickle payload: unpickling it runs code of the candidate's choosing."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[str]]:
        return (exec, (f"open({str(self.marker)!r}, 'w').write('forged metric')",))


def save(path: Path, obj: object) -> Path:
    torch.save(obj, path)
    return path


def honest(**changes: object) -> dict[str, object]:
    state: dict[str, object] = dict(Net().state_dict())
    state.update(changes)
    return state


def test_an_honest_state_dict_loads_and_fits_the_model(tmp_path: Path) -> None:
    trained = Net()
    path = save(tmp_path / "ckpt.pt", trained.state_dict())
    model = Net()
    model.load_state_dict(load_state_dict(path, model))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                 trained.state_dict().values(), strict=True))
    # nanoGPT's checkpoint: the state dict under "model" beside plain values.
    path = save(tmp_path / "nano.pt", {"model": trained.state_dict(), "iter_num": 5,
                                       "config": {"learning_rate": 6e-4}})
    assert set(load_state_dict(path, Net(), key="model")) == set(trained.state_dict())


def test_deny_pickle_payload_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    path = save(tmp_path / "ckpt.pt", {"fc.weight": Forge(marker)})
    with pytest.raises(CheckpointError, match=r"refused by torch.load\(weights_only=True\)"):
        load_state_dict(path, Net())
    assert not marker.exists()


def test_sensitivity_pickle_payload_runs_with_a_plain_torch_load(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checkpoint, "_unpickle", lambda path, handle: torch.load(
        handle, map_location="cpu", weights_only=False))
    marker = tmp_path / "ran"
    path = save(tmp_path / "ckpt.pt", {"fc.weight": Forge(marker)})
    with pytest.raises(CheckpointError):  # refused later, but the payload already ran
        load_state_dict(path, Net())
    assert marker.read_text() == "forged metric"


def zip_bomb(path: Path) -> Path:
    """A small zip whose member unpacks to 64 MiB of zeros."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("ckpt/data.pkl", b"\0" * (64 << 20))
    return path


def test_deny_over_the_size_cap_or_unpacking_past_it(tmp_path: Path) -> None:
    path = save(tmp_path / "ckpt.pt", honest())
    with pytest.raises(CheckpointError, match=r"bytes, over the cap of 100$"):
        load_state_dict(path, Net(), max_bytes=100)
    bomb = zip_bomb(tmp_path / "bomb.pt")
    assert bomb.stat().st_size < 1 << 20
    with pytest.raises(CheckpointError, match=r"unpacks to 67108\d+ bytes, over the cap"):
        load_state_dict(bomb, Net(), max_bytes=1 << 20)


def test_sensitivity_size_cap_off_reads_the_file_whole(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checkpoint, "_check_size", lambda path, handle, max_bytes: None)
    path = save(tmp_path / "ckpt.pt", honest())
    assert set(load_state_dict(path, Net(), max_bytes=100)) == set(Net().state_dict())
    read: list[int] = []
    original = checkpoint._unpickle

    def counting(path: str, handle: Any) -> Any:
        read.append(1)
        return original(path, handle)
    monkeypatch.setattr(checkpoint, "_unpickle", counting)
    with pytest.raises(CheckpointError, match="not a plain torch checkpoint"):
        load_state_dict(zip_bomb(tmp_path / "bomb.pt"), Net(), max_bytes=1 << 20)
    assert read == [1]  # torch.load got the bomb


def test_deny_entries_that_are_not_plain_tensors(tmp_path: Path) -> None:
    path = save(tmp_path / "ckpt.pt", honest(**{"fc.bias": [0.0, 0.0, 0.0]}))
    with pytest.raises(CheckpointError, match=r"not plain tensors: 'fc.bias'"):
        load_state_dict(path, Net())
    meta = save(tmp_path / "meta.pt", honest(**{"fc.weight": torch.empty(3, 4, device="meta")}))
    with pytest.raises(CheckpointError, match=r"not plain tensors: 'fc.weight'"):
        load_state_dict(meta, Net())
    with pytest.raises(CheckpointError, match=r"holds a list, not a state dict"):
        load_state_dict(save(tmp_path / "list.pt", [torch.zeros(3)]), Net())


def test_sensitivity_non_tensor_entry_crashes_the_scorer_without_the_check(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the check the refusal is gone: the scorer dies in its own code (a
    scorer failure, not the candidate's bad checkpoint)."""
    monkeypatch.setattr(checkpoint, "_check_entries", lambda path, state: dict(state))
    path = save(tmp_path / "ckpt.pt", honest(**{"fc.bias": [0.0, 0.0, 0.0]}))
    with pytest.raises(AttributeError, match="shape"):
        load_state_dict(path, Net())


def test_deny_extra_or_missing_keys(tmp_path: Path) -> None:
    extra = save(tmp_path / "extra.pt", honest(temperature=torch.tensor(0.0)))
    with pytest.raises(CheckpointError, match=r"missing \[\], unexpected \['temperature'\]"):
        load_state_dict(extra, Net())
    state = honest()
    del state["norm.bias"]
    missing = save(tmp_path / "missing.pt", state)
    with pytest.raises(CheckpointError, match=r"missing \['norm.bias'\], unexpected \[\]"):
        load_state_dict(missing, Net())


def test_sensitivity_extra_key_reaches_the_scorer_without_the_check(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checkpoint, "_check_keys", lambda path, state, expected: None)
    extra = save(tmp_path / "extra.pt", honest(temperature=torch.tensor(0.0)))
    assert "temperature" in load_state_dict(extra, Net())


def test_deny_wrong_shape_or_dtype(tmp_path: Path) -> None:
    wide = save(tmp_path / "wide.pt", honest(**{"fc.weight": torch.zeros(3, 5)}))
    with pytest.raises(CheckpointError, match=r"fc.weight is torch.float32 \(3, 5\), the "
                                              r"model's is torch.float32 \(3, 4\)"):
        load_state_dict(wide, Net())
    double = save(tmp_path / "f64.pt", honest(**{"fc.bias": torch.zeros(3, dtype=torch.float64)}))
    with pytest.raises(CheckpointError, match=r"fc.bias is torch.float64"):
        load_state_dict(double, Net())


def test_sensitivity_wrong_shape_reaches_the_scorer_without_the_check(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checkpoint, "_check_tensors", lambda path, state, expected: None)
    wide = save(tmp_path / "wide.pt", honest(**{"fc.weight": torch.zeros(3, 5)}))
    assert load_state_dict(wide, Net())["fc.weight"].shape == (3, 5)


def test_deny_non_finite_values(tmp_path: Path) -> None:
    for value in (float("nan"), float("inf")):
        path = save(tmp_path / "bad.pt", honest(**{"norm.weight": torch.full((3,), value)}))
        with pytest.raises(CheckpointError, match=r"norm.weight holds non-finite values"):
            load_state_dict(path, Net())


def test_sensitivity_nan_reaches_the_model_without_the_check(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checkpoint, "_check_finite", lambda path, state: None)
    path = save(tmp_path / "nan.pt", honest(**{"norm.weight": torch.full((3,), float("nan"))}))
    model = Net()
    model.load_state_dict(load_state_dict(path, model))
    assert torch.isnan(model.norm(model.fc(torch.ones(1, 4)))).all()


SCORER = b"""
import json, os, torch
from trainer.checkpoint import CheckpointError, load_state_dict

class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)
        self.norm = torch.nn.LayerNorm(3)

seen = {}
for name in sorted(os.listdir("out")):
    try:
        Net().load_state_dict(load_state_dict("out/" + name, Net()))
        seen[name] = "loaded"
    except CheckpointError as exc:
        seen[name] = "refused: " + str(exc)
print(json.dumps(seen))
"""


def blob(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


@pytest.mark.docker
def test_scorer_in_the_sandbox_image_refuses_hostile_checkpoints(
        executor: SandboxBackend, tmp_path: Path) -> None:
    """The helper as a task's scorer imports it in the sandbox image: the payload (which
    would print a forged metric) never runs; the honest checkpoint loads."""
    class Print:
        def __reduce__(self) -> tuple[Callable[..., Any], tuple[str]]:
            return (exec, ("print('{\"val_loss\": 0.0}')",))
    files = {"score.py": SCORER,
             "out/good.pt": blob(Net().state_dict()),
             "out/payload.pt": blob({"fc.weight": Print()}),
             "out/extra.pt": blob(honest(temperature=torch.tensor(0.0))),
             "out/shape.pt": blob(honest(**{"fc.weight": torch.zeros(3, 5)})),
             "out/nan.pt": blob(honest(**{"norm.bias": torch.full((3,), float("nan"))}))}
    result = executor.run_job(JobSpec(files=files, command=("python3", "score.py"),
                                      limits=Limits(wall_seconds=60)))
    assert result.status == Status.OK, result.stderr
    assert "val_loss" not in result.stdout
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["good.pt"] == "loaded"
    assert "weights_only=True" in seen["payload.pt"]
    assert "unexpected ['temperature']" in seen["extra.pt"]
    assert "fc.weight is torch.float32 (3, 5)" in seen["shape.pt"]
    assert "norm.bias holds non-finite values" in seen["nan.pt"]
