"""The audit log on its own: its chain and head, what `bilevel audit --verify` finds in a
log that was edited, cut, or had a record removed or moved, how the controller meets its
log at start, a write that fails, and the `bilevel audit` filters."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from controller.audit.chain import AUDIT_DIR, HEAD_FILE, LOG_FILE, Head, digest
from controller.audit.log import AuditCorrupt, AuditLog
from controller.audit.verify import verify
from controller.cli import main
from controller.store.runs import RunStore
from tests.audit_variants import plain, plain_problem


def _call(principal: str, method: str, run: str, status: str = "OK",
          time: str = "2030-01-01T00:00:00.000Z") -> list[dict[str, object]]:
    base = {"principal": principal, "role": "user", "method": f"/bilevel.v1.RunService/{method}",
            "run": run, "object": "", "peer": "ipv4:127.0.0.1:1", "time": time}
    return [{**base, "phase": "request", "bytes_in": 12},
            {**base, "phase": "response", "status": status, "bytes_in": 12, "bytes_out": 34}]


def _log(state: Path, calls: int = 3) -> Path:
    """A log of `calls` calls (two records each) written by the real writer."""
    audit = AuditLog(state / AUDIT_DIR)
    for n in range(calls):
        request, response = _call(["alice", "bob"][n % 2], "GetRun", f"run-{n}")
        seq = audit.append(request)["seq"]
        audit.append({**response, "call": seq})
    audit.close()
    return state / AUDIT_DIR / LOG_FILE


def _audit(capsys: pytest.CaptureFixture[str], state: Path, *flags: str) -> tuple[int, str]:
    code = main(["audit", "--state-dir", str(state), *flags])
    return code, capsys.readouterr().out


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def test_allow_an_intact_log_verifies(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                      ) -> None:
    _log(tmp_path)
    code, out = _audit(capsys, tmp_path, "--verify")
    assert code == 0 and "intact: 6 records" in out


def test_deny_edited_line_detected_by_verify(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    path = _log(tmp_path)
    lines = _lines(path)
    lines[4] = lines[4].replace(b'"principal":"alice"', b'"principal":"carol"')
    assert b"carol" in lines[4]
    path.write_bytes(b"".join(lines))
    code, out = _audit(capsys, tmp_path, "--verify")
    assert code == 1 and "line 5: (seq 5) does not match its hash" in out and "edited" in out


def test_twin_without_the_chain_an_edited_line_goes_unnoticed(tmp_path: Path) -> None:
    lines = plain(_lines(_log(tmp_path)))
    assert plain_problem(lines) is None
    lines[4] = lines[4].replace(b'"principal": "alice"', b'"principal": "carol"')
    assert b"carol" in lines[4]
    assert plain_problem(lines) is None  # the edit passes every check a plain log allows


def test_deny_edit_with_its_hash_recomputed_detected_at_the_next_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _log(tmp_path)
    lines = _lines(path)
    record = json.loads(lines[2])
    record["status"] = "PERMISSION_DENIED"
    record["hash"] = digest(record)
    lines[2] = json.dumps(record).encode() + b"\n"
    path.write_bytes(b"".join(lines))
    code, out = _audit(capsys, tmp_path, "--verify")
    assert code == 1 and "line 4:" in out and "prev hash differs" in out


def test_deny_removed_line_detected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _log(tmp_path)
    lines = _lines(path)
    del lines[3]
    path.write_bytes(b"".join(lines))
    code, out = _audit(capsys, tmp_path, "--verify")
    assert code == 1 and "line 4: has seq 5 where 4 belongs" in out


def test_deny_reordered_lines_detected(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                       ) -> None:
    path = _log(tmp_path)
    lines = _lines(path)
    lines[1], lines[2] = lines[2], lines[1]
    path.write_bytes(b"".join(lines))
    code, out = _audit(capsys, tmp_path, "--verify")
    assert code == 1 and "line 2: has seq 3" in out


def test_deny_truncated_log_detected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _log(tmp_path)
    path.write_bytes(b"".join(_lines(path)[:4]))  # the last call cut off, chain still valid
    code, out = _audit(capsys, tmp_path, "--verify")
    assert code == 1 and "line 5: is missing" in out and "cut" in out
    with pytest.raises(AuditCorrupt, match="it was cut"):  # nor is it written on
        AuditLog(tmp_path / AUDIT_DIR)


def test_deny_log_cut_inside_a_record_detected(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    path = _log(tmp_path)
    path.write_bytes(path.read_bytes()[:-40])
    code, out = _audit(capsys, tmp_path, "--verify")
    assert code == 1 and "line 6: is incomplete" in out


def test_deny_removed_head_detected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _log(tmp_path)
    (tmp_path / AUDIT_DIR / HEAD_FILE).unlink()
    code, out = _audit(capsys, tmp_path, "--verify")
    assert code == 1 and "audit.head is missing" in out
    with pytest.raises(AuditCorrupt, match="no head"):
        AuditLog(tmp_path / AUDIT_DIR)


def test_deny_edited_last_record_refuses_the_restart(tmp_path: Path) -> None:
    path = _log(tmp_path)
    path.write_bytes(path.read_bytes().replace(b'"run":"run-2"', b'"run":"run-9"'))
    with pytest.raises(AuditCorrupt, match="does not match its hash"):
        AuditLog(tmp_path / AUDIT_DIR)


def test_allow_a_head_behind_its_log_after_a_crash_is_caught_up(tmp_path: Path) -> None:
    path = _log(tmp_path)
    head_path = tmp_path / AUDIT_DIR / HEAD_FILE
    before = json.loads(_lines(path)[-2])  # a crash after the last record, before its head
    head_path.write_bytes(Head(before["seq"], before["hash"]).encode())
    audit = AuditLog(tmp_path / AUDIT_DIR)
    assert audit.head.count == 6
    assert audit.append(_call("alice", "GetRun", "run-0")[0])["seq"] == 7
    audit.close()
    assert verify(tmp_path / AUDIT_DIR).problem is None


def test_allow_the_chain_goes_on_across_restarts(tmp_path: Path) -> None:
    _log(tmp_path, calls=2)
    _log(tmp_path, calls=2)
    verdict = verify(tmp_path / AUDIT_DIR)
    assert verdict.problem is None and verdict.records == 8


def test_deny_a_record_that_cannot_be_written_is_refused_and_leaves_the_chain_whole(
        tmp_path: Path) -> None:
    """A real write past the file size limit (as a full disk would): refused, its partial
    bytes undone, and the next record (with room again) chains on."""
    script = textwrap.dedent(f"""
        import resource, signal, sys
        from pathlib import Path
        from controller.audit.log import AuditLog, AuditUnavailable
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        audit = AuditLog(Path({str(tmp_path / AUDIT_DIR)!r}))
        audit.append({{"phase": "request", "method": "a"}})
        size = audit.path.stat().st_size
        resource.setrlimit(resource.RLIMIT_FSIZE, (size + 50, resource.RLIM_INFINITY))
        try:
            audit.append({{"phase": "request", "method": "b" * 200}})
        except AuditUnavailable as exc:
            print("refused:", exc)
        assert audit.path.stat().st_size == size, "the partial record was not undone"
        resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)
        print("next seq", audit.append({{"phase": "request", "method": "c"}})["seq"])
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, cwd=Path(__file__).parents[1])
    assert done.returncode == 0, done.stderr
    assert "refused: the audit log" in done.stdout and "cannot be written" in done.stdout
    assert "next seq 2" in done.stdout
    assert verify(tmp_path / AUDIT_DIR).problem is None


def test_cli_filters_by_principal_run_and_time(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    _log(tmp_path, calls=4)
    code, out = _audit(capsys, tmp_path, "--principal", "bob")
    rows = [line.split("\t") for line in out.splitlines()]
    assert code == 0 and [r[3] for r in rows] == ["run-1", "run-3"]
    assert all(r[1] == "bob" and r[2] == "GetRun" and r[5] == "OK" for r in rows)
    assert rows[0][6] == "in=12 out=34"
    code, out = _audit(capsys, tmp_path, "--run", "run-2", "--json")
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["phase"] for r in records] == ["request", "response"]
    assert {r["principal"] for r in records} == {"alice"}
    code, out = _audit(capsys, tmp_path, "--since", "2030-01-02T00:00Z")
    assert code == 0 and out == ""
    code, out = _audit(capsys, tmp_path, "--since", "1d")  # the records are of 2030
    assert len(out.splitlines()) == 4


def test_cli_without_a_log_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "--state-dir", str(tmp_path), "--verify"]) == 2
    assert "no audit log" in capsys.readouterr().err


def test_a_delete_without_a_controller_is_recorded_and_refused_on_a_cut_log(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`bilevel delete` on a state dir no controller holds: the same two records, by the
    state dir's owner; on a log that was cut it deletes nothing."""
    store = RunStore(tmp_path / "bilevel.sqlite3")
    for run_id in ("run-00000000000a", "run-00000000000b"):
        store.create_run(run_id, {})  # left running by a controller that stopped
    store.close()
    local = ("--state-dir", str(tmp_path), "--docker-url", "unix:///nonexistent/docker.sock")
    assert main(["delete", "--cancel", "run-00000000000a", *local]) == 0
    assert main(["delete", "run-0000000000zz", *local]) == 2
    records = [json.loads(line) for line in _lines(tmp_path / AUDIT_DIR / LOG_FILE)]
    assert [(r["phase"], r["principal"], r["peer"], r["run"], r.get("status"))
            for r in records] == [
        ("request", "local", "local", "run-00000000000a", None),
        ("response", "local", "local", "run-00000000000a", "OK"),
        ("request", "local", "local", "run-0000000000zz", None),
        ("response", "local", "local", "run-0000000000zz", "NOT_FOUND")]
    assert records[1]["bytes_out"] > 0 and records[1]["method"].endswith("/DeleteRun")
    assert verify(tmp_path / AUDIT_DIR).problem is None
    path = tmp_path / AUDIT_DIR / LOG_FILE
    path.write_bytes(b"".join(_lines(path)[:2]))
    capsys.readouterr()
    assert main(["delete", "--cancel", "run-00000000000b", *local]) == 2
    assert "does not continue its head" in capsys.readouterr().err
    store = RunStore(tmp_path / "bilevel.sqlite3")
    assert store.get_run("run-00000000000b").state.value == "running"  # not deleted
    store.close()
