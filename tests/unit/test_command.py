"""slurm_command against real child processes (tests/fakes/fake_sacct.py and python -c).

No mocks: every test runs a real process, so process groups, pipes and signals are real.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from collector.slurm.command import slurm_command
from collector.slurm.source import SlurmCommandError, SlurmTimeout

FAKE = Path(__file__).resolve().parent.parent / "fakes" / "fake_sacct.py"


@pytest.fixture
def sacct(tmp_path: Path) -> str:
    """An executable named sacct that runs the fake with this interpreter."""
    wrapper = tmp_path / "sacct"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE}" "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper)


def py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def is_gone(pid: int) -> bool:
    """True once pid no longer runs (a zombie waiting for init to reap it counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def wait_gone(pid: int, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if is_gone(pid):
            return True
        time.sleep(0.05)
    return is_gone(pid)


def read_pids(pid_file: Path, seconds: float = 10.0) -> tuple[int, int]:
    deadline = time.monotonic() + seconds
    while not pid_file.exists():
        assert time.monotonic() < deadline, "the fake never wrote its pids"
        time.sleep(0.02)
    leader, child = pid_file.read_text().split()
    return int(leader), int(child)


def test_streams_lines_without_newlines(sacct):
    lines = list(slurm_command([sacct, "--format=JobID,State", "--noheader",
                                "-S", "2026-11-22T12:47:00", "-E", "2026-11-22T12:47:30"],
                               timeout_s=30))
    # sacct-window-semantics.txt: this window holds 10, 14+0, 14+1 and the REQUEUED
    # record of 16 (the requeued run is eligible only at 12:50:18), plus their steps.
    assert lines == ["10|TIMEOUT", "10.batch|CANCELLED", "14+0|CANCELLED by 0",
                     "14+1|CANCELLED by 0", "16|REQUEUED", "16.batch|CANCELLED"]


def test_child_environment_has_tz_utc_and_extra_env(monkeypatch):
    monkeypatch.setenv("TZ", "America/New_York")
    monkeypatch.setenv("HPC_BILLING_TEST_INHERITED", "yes")
    code = ("import os; print(os.environ['TZ']); print(os.environ['SLURM_TIME_FORMAT']);"
            "print(os.environ['HPC_BILLING_TEST_INHERITED'])")
    assert list(slurm_command(py(code), timeout_s=30, env={"SLURM_TIME_FORMAT": "%s"})) == [
        "UTC", "%s", "yes"]


def test_undecodable_bytes_and_missing_final_newline():
    code = r"import sys; sys.stdout.buffer.write(b'ok\xff\n\rcr\x1fus\nlast')"
    seen = []
    # A last line without its newline is still yielded (the parser quarantines it), then
    # the output is refused as truncated although the command exited 0.
    with pytest.raises(SlurmCommandError, match="truncated") as caught:
        for line in slurm_command(py(code), timeout_s=30):
            seen.append(line)
    assert seen == ["ok\ufffd", "\rcr\x1fus", "last"]
    assert caught.value.returncode == 0
    assert list(slurm_command(py(code), timeout_s=30, complete_lines=False)) == [
        "ok\ufffd", "\rcr\x1fus", "last"]
    assert list(slurm_command(py("print('a'); print('b')"), timeout_s=30)) == ["a", "b"]
    assert list(slurm_command(py("pass"), timeout_s=30)) == []


def test_timeout_kills_the_whole_process_group(sacct, tmp_path, monkeypatch):
    pid_file = tmp_path / "pids"
    monkeypatch.setenv("FAKE_SACCT_MODE", "hang")
    monkeypatch.setenv("FAKE_SACCT_PID_FILE", str(pid_file))
    argv = [sacct, "--noheader"]
    seen = []
    started = time.monotonic()
    with pytest.raises(SlurmTimeout) as caught:
        for line in slurm_command(argv, timeout_s=1.5):
            seen.append(line)
    elapsed = time.monotonic() - started
    assert seen == ["1"]                                 # output before the hang arrives
    assert 1.4 <= elapsed < 15
    err = caught.value
    assert err.argv == argv and err.returncode is None
    assert "timed out after 1.5s" in str(err)
    leader, child = read_pids(pid_file)
    assert wait_gone(leader)
    assert wait_gone(child), "the sleeping child of the fake survived the timeout"


def test_closing_early_kills_and_reaps(sacct, tmp_path, monkeypatch):
    pid_file = tmp_path / "pids"
    monkeypatch.setenv("FAKE_SACCT_MODE", "hang")
    monkeypatch.setenv("FAKE_SACCT_PID_FILE", str(pid_file))
    lines = slurm_command([sacct], timeout_s=120)
    assert next(lines) == "1"
    leader, child = read_pids(pid_file)
    started = time.monotonic()
    lines.close()
    assert time.monotonic() - started < 10
    assert wait_gone(leader) and wait_gone(child)


def test_nonzero_exit_carries_argv_code_and_stderr(sacct, monkeypatch):
    monkeypatch.setenv("FAKE_SACCT_MODE", "fail")
    argv = [sacct, "--allusers", "--noheader"]
    with pytest.raises(SlurmCommandError) as caught:
        list(slurm_command(argv, timeout_s=30))
    err = caught.value
    assert not isinstance(err, SlurmTimeout)
    assert err.argv == argv
    assert err.returncode == 1
    assert "sacct: error: Problem talking to the database: Connection refused" in err.stderr
    assert "exited with code 1" in str(err) and "Connection refused" in str(err)


def test_invalid_field_is_reported_like_sacct(sacct):
    with pytest.raises(SlurmCommandError) as caught:
        list(slurm_command([sacct, "--format=JobID,ArrayJobID"], timeout_s=30))
    assert caught.value.returncode == 1
    assert 'sacct: error: Invalid field requested: "ArrayJobID"' in caught.value.stderr


def test_stdout_is_drained_before_the_error():
    code = "import sys; print('a'); print('b'); sys.stderr.write('bad\\n'); sys.exit(3)"
    seen = []
    with pytest.raises(SlurmCommandError) as caught:
        for line in slurm_command(py(code), timeout_s=30):
            seen.append(line)
    assert seen == ["a", "b"]
    assert (caught.value.returncode, caught.value.stderr) == (3, "bad\n")


def test_large_stderr_does_not_deadlock():
    code = "import sys; sys.stderr.write('e' * 2_000_000); sys.stderr.flush(); print('done')"
    assert list(slurm_command(py(code), timeout_s=30)) == ["done"]


def test_missing_binary():
    with pytest.raises(SlurmCommandError) as caught:
        list(slurm_command(["/nonexistent/bin/sacct", "--version"], timeout_s=5))
    err = caught.value
    assert err.returncode is None
    assert "command not found" in str(err) and "/nonexistent/bin/sacct" in str(err)


def test_not_executable(tmp_path):
    script = tmp_path / "sacct"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    with pytest.raises(SlurmCommandError, match="cannot execute"):
        list(slurm_command([str(script)], timeout_s=5))


def test_killed_by_signal_is_an_error():
    code = "import os, signal; os.kill(os.getpid(), signal.SIGTERM)"
    with pytest.raises(SlurmCommandError, match="killed by signal 15"):
        list(slurm_command(py(code), timeout_s=30))


def test_bad_arguments():
    with pytest.raises(ValueError):
        list(slurm_command([], timeout_s=5))
    with pytest.raises(ValueError):
        list(slurm_command(py("pass"), timeout_s=0))
