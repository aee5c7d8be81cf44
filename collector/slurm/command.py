"""The one function that runs Slurm commands (DESIGN §7.4).

Design notes: docs/design/slurm.md.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import tempfile
import threading
from collections.abc import Generator, Mapping, Sequence
from io import BufferedReader
from typing import IO

from collector.slurm.source import SlurmCommandError, SlurmTimeout

# Keep at most this much of stderr for the error message / log (the tail is what matters).
_STDERR_LIMIT = 64 * 1024

# The cancel functions of the Slurm commands running now (cancel_running kills them all).
_RUNNING: dict[int, object] = {}
_RUNNING_LOCK = threading.Lock()


def cancel_running() -> int:
    """Kill every Slurm command this process is running now (with its children); each
    one's reader then raises ``SlurmCommandError("cancelled ...")``. The daemon calls it on
    shutdown when a poll is still waiting for sacct after the grace period: the poll fails
    and rolls back instead of holding SIGTERM for up to the sacct timeout. Returns how
    many commands were cancelled."""
    with _RUNNING_LOCK:
        cancels = list(_RUNNING.values())
    for cancel in cancels:
        cancel()  # type: ignore[operator]
    return len(cancels)


def _read_stderr(handle: IO[bytes]) -> str:
    """Return (the tail of) what the child wrote to its stderr temp file."""
    try:
        handle.flush()
        size = handle.seek(0, os.SEEK_END)
        handle.seek(max(0, size - _STDERR_LIMIT))
        data: bytes = handle.read()
        return data.decode("utf-8", errors="replace")
    except (OSError, ValueError):
        return ""


# Read-ahead: a thread drains the child's stdout into at most this many chunks of up to
# _READ_CHUNK bytes (64 MiB), so the child never waits on a full pipe while the consumer
# parses and writes: sacct's own output phase overlaps the collector's work.
_READ_CHUNK = 1 << 20
_READ_AHEAD_CHUNKS = 64


def _read_ahead(stream: BufferedReader, chunks: queue.Queue[bytes | BaseException | None],
                stop: threading.Event) -> None:
    """Put the stream's bytes on ``chunks`` (then None at EOF, or the exception); give up
    when ``stop`` is set (the consumer left) instead of blocking on a full queue."""
    def put(item: bytes | BaseException | None) -> bool:
        while not stop.is_set():
            try:
                chunks.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    try:
        while True:
            chunk = stream.read1(_READ_CHUNK)
            if not chunk:
                break
            if not put(chunk):
                return
    except (OSError, ValueError) as exc:   # the stream closed under us, or a read error
        put(exc)
        return
    put(None)


def _kill_group(pid: int) -> None:
    """SIGKILL the child's process group (it leads its own session: start_new_session)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def slurm_command(argv: Sequence[str], *, timeout_s: float,
                  env: Mapping[str, str] | None = None,
                  complete_lines: bool = True) -> Generator[str, None, None]:
    """Run ``argv`` and yield its stdout lines (newline stripped) as they arrive.

    The child's environment is ``os.environ`` plus ``TZ=UTC`` plus ``env``. The child leads
    a new session, so the watchdog can SIGKILL it together with anything it spawned.

    Raises (during iteration):
      SlurmTimeout       the command ran past ``timeout_s``; its process group was killed.
      SlurmCommandError  the binary could not be started, or it exited non-zero, or (with
                         ``complete_lines``) its output ended in the middle of a line
                         (raised after all of stdout has been yielded).
    Closing the generator early (``close()``, ``break`` in a for loop, garbage collection)
    kills the process group and reaps the child.
    """
    argv = [os.fspath(a) for a in argv]
    if not argv:
        raise ValueError("slurm_command needs a non-empty argv")
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s!r}")
    child_env = dict(os.environ)
    child_env["TZ"] = "UTC"
    if env:
        child_env.update(env)

    with tempfile.TemporaryFile(prefix="slurm-stderr-") as err:
        try:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
                env=child_env, start_new_session=True, close_fds=True)
        except FileNotFoundError as exc:
            raise SlurmCommandError(
                argv, None, "",
                f"command not found: {argv[0]!r} does not exist or is not on PATH "
                f"(set the path to the Slurm binary in the settings)") from exc
        except PermissionError as exc:
            raise SlurmCommandError(argv, None, "",
                                    f"cannot execute {argv[0]!r}: {exc.strerror}") from exc
        except OSError as exc:
            raise SlurmCommandError(argv, None, "", f"cannot start {argv[0]!r}: {exc}") from exc

        # The lock orders "the child is finished and reaped" against "the watchdog kills
        # the group", so a deadline that falls just after a clean exit neither kills a
        # reaped pid nor turns a success into a timeout.
        lock = threading.Lock()
        state = {"done": False, "timed_out": False, "cancelled": False}

        def _watchdog() -> None:
            with lock:
                if not state["done"]:
                    state["timed_out"] = True
                    _kill_group(proc.pid)

        def _cancel() -> None:
            with lock:
                if not state["done"]:
                    state["cancelled"] = True
                    _kill_group(proc.pid)

        with _RUNNING_LOCK:
            _RUNNING[proc.pid] = _cancel
        timer = threading.Timer(timeout_s, _watchdog)
        timer.daemon = True
        timer.start()
        finished = False
        unterminated = b""
        assert proc.stdout is not None
        chunks: queue.Queue[bytes | BaseException | None] = queue.Queue(_READ_AHEAD_CHUNKS)
        stop = threading.Event()
        reader = threading.Thread(target=_read_ahead, args=(proc.stdout, chunks, stop),
                                  name=f"slurm-read-{proc.pid}", daemon=True)
        reader.start()
        try:
            tail = b""
            while True:
                chunk = chunks.get()
                if chunk is None:
                    break
                if isinstance(chunk, BaseException):
                    raise chunk
                lines = (tail + chunk).split(b"\n") if tail else chunk.split(b"\n")
                tail = lines.pop()           # b"" when the chunk ended with a newline
                for raw in lines:            # lines end only at b"\n"
                    yield raw.decode("utf-8", errors="replace")
            if tail:
                unterminated = tail          # only the last line can lack its newline
                yield tail.decode("utf-8", errors="replace")
            returncode = proc.wait()
            with lock:
                state["done"] = True
            finished = True
        finally:
            timer.cancel()
            with _RUNNING_LOCK:
                _RUNNING.pop(proc.pid, None)
            if not finished:
                # Consumer closed us early, or an exception came through the yield.
                with lock:
                    state["done"] = True
                    if proc.poll() is None:
                        _kill_group(proc.pid)
                proc.wait()
            stop.set()
            # The group is dead or done, so the pipe is at EOF; a grandchild that left the
            # group could still hold it open: never wait for the reader longer than this.
            reader.join(timeout=5)
            if not reader.is_alive():
                proc.stdout.close()

        stderr = _read_stderr(err)
        if state["cancelled"]:
            raise SlurmCommandError(argv, None, stderr,
                                    "cancelled: the collector is shutting down")
        if state["timed_out"]:
            raise SlurmTimeout(argv, None, stderr, f"timed out after {timeout_s}s")
        if returncode != 0:
            if returncode < 0:
                raise SlurmCommandError(argv, returncode, stderr,
                                        f"killed by signal {-returncode}")
            raise SlurmCommandError(argv, returncode, stderr)
        if unterminated and complete_lines:
            raise SlurmCommandError(
                argv, returncode, stderr,
                "output ended in the middle of a line (truncated): the last record is "
                "incomplete, so this output is not trusted; the cut line begins "
                + repr(unterminated[:200].decode("utf-8", errors="replace")))
