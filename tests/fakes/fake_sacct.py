#!/usr/bin/env python3
"""A fake ``sacct`` executable for tests: the process boundary, never a mock of our code.

It replays a captured real export (``FAKE_SACCT_DATA``, default
tests/fixtures/sacct-wide-header.psv: ``--parsable2`` with a header, default units, ISO
times in UTC) the way Slurm 22.05's sacct would print it for the given arguments:

  --format/-o        columns picked by name (case-insensitive); an unknown name fails like
                     sacct: ``sacct: error: Invalid field requested: "X"``, exit 1
  --delimiter        field separator (default ``|``); --parsable2/-P, --parsable/-p
  --noheader/-n      no header line
  --noconvert        AllocTRES/ReqTRES/ReqMem mem in MB (``1024M``), MaxRSS/AveRSS/
                     MaxVMSize and TRESUsageIn* sizes in bare bytes
  SLURM_TIME_FORMAT=%s  times as epoch seconds; otherwise ISO local time in $TZ
  -S/-E              window, read in $TZ: a job line is printed when Eligible < E and
                     (End >= S or End Unknown); held jobs (Eligible Unknown) never are;
                     step lines follow their job line
  --duplicates/-D    without it only the last record of a JobIDRaw is kept
  --clusters/-M      only records of that cluster
  --state/-s, --allusers/-a, -X ...  accepted (logged) and otherwise ignored

Environment knobs:
  FAKE_SACCT_MODE      normal (default) | hang | fail | garbage | truncate | truncate_fail | empty
                       | stderr | fail_full
                       (truncate_fail: half the output, cut mid-line, then a database
                       error on stderr and exit 1, as when slurmdbd goes away mid-query;
                       stderr: the normal output plus warnings on stderr, exit 0;
                       fail_full: the whole output, then an error and exit 1)
  FAKE_SACCT_MODE_FILE when set and the file exists, its stripped content is the mode
                       (read at every call, so a test switches faults between polls of one
                       long-running collector)
  FAKE_SACCT_ARGV_LOG  write {"argv": [...], "env": {...}} (JSON) to this path
  FAKE_SACCT_ARGV_LOG_APPEND  append the same JSON, one line per call, to this path
  FAKE_SACCT_PID_FILE  (hang) write "<own pid> <child pid>" here once both run
  FAKE_SACCT_GATE      pause mid-output: after FAKE_SACCT_GATE_AFTER lines (default: half)
                       are written and flushed, create FAKE_SACCT_GATE + ".reached" (holding
                       our pid) and wait until the file FAKE_SACCT_GATE exists (at most
                       FAKE_SACCT_GATE_TIMEOUT s, default 120), then write the rest. Only
                       calls that find no ".reached" file pause (one pause per test).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

DEFAULT_DATA = Path(__file__).resolve().parent.parent / "fixtures" / "sacct-wide-header.psv"
TIME_COLUMNS = {"submit", "eligible", "start", "end"}
UNITS = {"K": 1024, "M": 1024 ** 2, "G": 1024 ** 3, "T": 1024 ** 4, "P": 1024 ** 5}


def fail(message: str, code: int = 1) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()
    sys.exit(code)


def parse_args(argv: list[str]) -> dict:
    opts = {"format": None, "delimiter": "|", "noheader": False, "noconvert": False,
            "start": None, "end": None, "duplicates": False, "clusters": None,
            "parsable": False}
    with_value = {"--format": "format", "-o": "format", "--delimiter": "delimiter",
                  "-S": "start", "--starttime": "start", "-E": "end", "--endtime": "end",
                  "-M": "clusters", "--clusters": "clusters", "-s": "state",
                  "--state": "state", "-u": "user", "--user": "user", "-j": "jobs",
                  "--jobs": "jobs", "-A": "accounts", "--accounts": "accounts"}
    flags = {"--noheader": "noheader", "-n": "noheader", "--noconvert": "noconvert",
             "--duplicates": "duplicates", "-D": "duplicates", "--parsable": "parsable",
             "-p": "parsable", "--parsable2": None, "-P": None, "--allusers": None,
             "-a": None, "-X": None, "--allocations": None, "-v": None}
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, eq, value = arg.partition("=")
        if name in with_value:
            if not eq:
                i += 1
                if i >= len(argv):
                    fail(f"sacct: option '{arg}' requires an argument")
                value = argv[i]
            opts[with_value[name]] = value
        elif arg in flags:
            if flags[arg]:
                opts[flags[arg]] = True
        else:
            fail(f"sacct: unrecognized option '{arg}'\nTry \"sacct --help\" for more information")
        i += 1
    return opts


def local_zone() -> timezone | ZoneInfo:
    tz = os.environ.get("TZ", "").lstrip(":")
    return ZoneInfo(tz) if tz and tz != "UTC" else timezone.utc


def parse_window_time(text: str | None, tz) -> datetime | None:
    if text is None:
        return None
    try:
        return datetime.fromisoformat(text).replace(tzinfo=tz)
    except ValueError:
        fail(f"Invalid time specification (pos=0): {text}")
    return None


def parse_record_time(text: str) -> datetime | None:
    if text in ("Unknown", "None", ""):
        return None
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)


def to_bytes(value: str) -> str:
    if value and value[-1].upper() in UNITS:
        number = value[:-1]
        if number.replace(".", "", 1).isdigit():
            return str(int(float(number) * UNITS[value[-1].upper()]))
    return value


def to_mb(value: str) -> str:
    if value and value[-1].upper() in UNITS and value[:-1].isdigit():
        return f"{int(value[:-1]) * UNITS[value[-1].upper()] // UNITS['M']}M"
    return value


def noconvert(column: str, value: str) -> str:
    col = column.lower()
    if col in ("alloctres", "reqtres"):
        return ",".join(f"mem={to_mb(item[4:])}" if item.startswith("mem=") else item
                        for item in value.split(",")) if value else value
    if col == "reqmem":
        return to_mb(value)
    if col in ("maxrss", "averss", "maxvmsize", "avevmsize"):
        return to_bytes(value)
    if col.startswith("tresusage"):
        out = []
        for item in value.split(",") if value else []:
            key, _, val = item.partition("=")
            out.append(item if key == "cpu" else f"{key}={to_bytes(val)}")
        return ",".join(out)
    return value


def current_mode() -> str:
    mode_file = os.environ.get("FAKE_SACCT_MODE_FILE")
    if mode_file:
        try:
            text = Path(mode_file).read_text().strip()
        except FileNotFoundError:
            text = ""
        if text:
            return text
    return os.environ.get("FAKE_SACCT_MODE", "normal")


def write_lines(out, body: list[bytes]) -> None:
    """Write the output lines, pausing at the gate when one is configured."""
    gate = os.environ.get("FAKE_SACCT_GATE")
    reached = Path(gate + ".reached") if gate else None
    if reached is None or reached.exists():
        out.write(b"".join(line + b"\n" for line in body))
        return
    after = int(os.environ.get("FAKE_SACCT_GATE_AFTER") or len(body) // 2)
    out.write(b"".join(line + b"\n" for line in body[:after]))
    out.flush()
    reached.write_text(str(os.getpid()))
    deadline = time.monotonic() + float(os.environ.get("FAKE_SACCT_GATE_TIMEOUT", "120"))
    while not Path(gate).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    out.write(b"".join(line + b"\n" for line in body[after:]))


def main() -> None:
    argv = sys.argv[1:]
    record = json.dumps({"argv": argv, "env": {
        "TZ": os.environ.get("TZ"),
        "SLURM_TIME_FORMAT": os.environ.get("SLURM_TIME_FORMAT")}})
    log = os.environ.get("FAKE_SACCT_ARGV_LOG")
    if log:
        Path(log).write_text(record)
    append_log = os.environ.get("FAKE_SACCT_ARGV_LOG_APPEND")
    if append_log:
        with open(append_log, "a", encoding="utf-8") as handle:
            handle.write(record + "\n")
    mode = current_mode()
    opts = parse_args(argv)

    if mode == "fail":
        fail("sacct: error: Problem talking to the database: Connection refused")
    if mode == "hang":
        # A child in the same process group, holding our stdout: the collector must kill
        # the whole group, or its read would never see EOF.
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
        pid_file = os.environ.get("FAKE_SACCT_PID_FILE")
        sys.stdout.write("1\n")
        sys.stdout.flush()
        if pid_file:
            tmp = pid_file + ".tmp"
            Path(tmp).write_text(f"{os.getpid()} {child.pid}")
            os.replace(tmp, pid_file)
        time.sleep(3600)
        return
    if mode == "empty":
        return

    data = Path(os.environ.get("FAKE_SACCT_DATA") or DEFAULT_DATA)
    rows = data.read_text(encoding="utf-8").splitlines()
    header = rows[0].split("|")
    lower = {name.lower(): pos for pos, name in enumerate(header)}
    wanted = opts["format"].split(",") if opts["format"] else ["JobID", "JobName", "State"]
    picks = []
    for name in wanted:
        bare = name.partition("%")[0]
        if bare.lower() not in lower:
            fail(f'sacct: error: Invalid field requested: "{bare}"')
        picks.append((bare, lower[bare.lower()]))

    tz = local_zone()
    since = parse_window_time(opts["start"], tz)
    until = parse_window_time(opts["end"], tz)
    epoch = os.environ.get("SLURM_TIME_FORMAT") == "%s"
    i_jobid, i_raw = lower["jobid"], lower["jobidraw"]
    i_elig, i_end = lower["eligible"], lower["end"]
    i_cluster = lower.get("cluster")

    # Group records: a job line and the step lines after it.
    groups: list[tuple[list[str], list[list[str]]]] = []
    for row in rows[1:]:
        if not row:
            continue
        fields = row.split("|")
        if "." in fields[i_jobid]:
            if groups:
                groups[-1][1].append(fields)
            continue
        groups.append((fields, []))

    selected = []
    for job, steps in groups:
        eligible = parse_record_time(job[i_elig])
        end = parse_record_time(job[i_end])
        if eligible is None:
            continue                                     # held: never in a window
        if until is not None and not eligible < until:
            continue
        if since is not None and end is not None and end < since:
            continue
        if opts["clusters"] and i_cluster is not None and job[i_cluster] != opts["clusters"]:
            continue
        selected.append((job, steps))
    if not opts["duplicates"]:
        last = {job[i_raw]: n for n, (job, _) in enumerate(selected)}
        selected = [pair for n, pair in enumerate(selected) if last[pair[0][i_raw]] == n]

    def render(fields: list[str]) -> str:
        out = []
        for name, pos in picks:
            value = fields[pos]
            if name.lower() in TIME_COLUMNS:
                moment = parse_record_time(value)
                if moment is not None:
                    value = (str(int(moment.timestamp())) if epoch
                             else moment.astimezone(tz).strftime("%Y-%m-%dT%H:%M:%S"))
            elif opts["noconvert"]:
                value = noconvert(name, value)
            out.append(value)
        line = opts["delimiter"].join(out)
        return line + opts["delimiter"] if opts["parsable"] else line

    lines = [] if opts["noheader"] else [opts["delimiter"].join(name for name, _ in picks)]
    for job, steps in selected:
        lines.append(render(job))
        lines.extend(render(step) for step in steps)

    out = sys.stdout.buffer
    if mode == "garbage":
        delim = opts["delimiter"]
        garbage = [b"this is not sacct output",
                   delim.join(["x", "y", "z"]).encode(),
                   b"\xff\xfe invalid utf-8 \xc3" + delim.encode() + b"x"]
        middle = len(lines) // 2
        body = [line.encode() for line in lines]
        body = garbage[:1] + body[:middle] + garbage[1:] + body[middle:]
        out.write(b"\n".join(body) + b"\n")
    elif mode == "truncate":
        if lines:
            lines[-1] = lines[-1][: len(lines[-1]) // 2]
        out.write("\n".join(lines).encode())             # no newline after the cut
    elif mode == "truncate_fail":
        half = lines[: max(1, len(lines) // 2)]
        half[-1] = half[-1][: len(half[-1]) // 2]
        out.write("\n".join(half).encode())
        out.flush()
        fail("sacct: error: slurmdbd: Connection reset by peer")
    elif mode == "fail_full":
        out.write(("\n".join(lines) + "\n").encode() if lines else b"")
        out.flush()
        fail("sacct: error: slurmdbd: Getting response to message type: DBD_GET_JOBS_COND")
    else:
        if mode == "stderr":
            sys.stderr.write("sacct: error: Problem with some other sacct option (a warning)\n"
                             "sacct: fatal: not really\n")
            sys.stderr.flush()
        try:
            write_lines(out, [line.encode() for line in lines])
        except BrokenPipeError:
            # Our reader went away (its collector was killed): exit quietly like sacct.
            os._exit(141)
    try:
        out.flush()
    except BrokenPipeError:
        os._exit(141)


if __name__ == "__main__":
    main()
