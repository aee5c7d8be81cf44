"""Write the JSON corpus: the same accounting records as every version of Slurm prints them.

``python tests/corpus/json/build.py`` (re)writes ``v0.0.NN/sacct.json`` for NN = 36..45:
one ``sacct --json`` document per data version, holding the jobs of ``SCENARIO`` rendered
in that version's shapes as Slurm's own parser tables define them (see
docs/slurm-json.md for the table and the sources). The expected stored values are written
by hand, separately, in ``expected.json``; tests/unit/test_sacct_json.py checks that the
committed files are exactly what this script writes.

Shapes by version (the ones a reader meets):
  * dbv0.0.36/37/38 (openapi plugins, Slurm 20.11/21.08/22.05): plain numbers, null for
    NO_VAL/INFINITE; ``state.current`` a string; TRES ``name`` null when untyped;
    ``step.id`` "batch" or a number, with ``step.job_id`` and ``step.het.component``;
    ``exit_code`` ``{status, return_code, signal: {signal_id, name}}``;
    ``reservation.name`` a number (a UINT32 parser on a string). 36/37 print the eligible
    time as ``time.start`` (both are parsed from ``eligible``); 36 has ``state.previous``.
  * data_parser v0.0.39+ (23.02 on): ``state.current`` a flag list; TRES ``name`` "";
    ``step.id`` "JOBID.STEP"; NO_VAL-able numbers (``time.limit``, ``array.task_id``,
    ``het.job_offset``, ``priority``, exit ``return_code``, signal ``id``) as
    ``{set, infinite, number}``; exit ``status`` a list.
  * v0.0.40+: the step's ``time.start``/``time.end`` and ``statistics.energy.consumed``
    wrapped too (TIMESTAMP_NO_VAL, UINT64_NO_VAL); the job's times stay plain (TIMESTAMP).
  * v0.0.45: ``sluid`` (db_index as a SLUID string), ``restart_cnt``, ``qosreq``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
VERSIONS = range(36, 46)
CLUSTER = "corpus"
T = 1796000000            # 2026-12-30T22:13:20Z
RELEASES = {36: "20.11.9", 37: "21.08.8", 38: "22.05.8", 39: "23.02.7", 40: "23.11.10",
            41: "24.05.8", 42: "24.11.5", 43: "25.05.3", 44: "25.11.2", 45: "26.05.5"}
TRES_IDS = {"cpu": 1, "mem": 2, "energy": 3, "node": 4, "billing": 5, "fs/disk": 6, "vmem": 7,
            "pages": 8, "gres/gpu": 1001, "gres/gpu:a100": 1002, "gres/gpu:h100": 1003,
            "gres/gpumem": 1004, "gres/gpuutil": 1005, "gres/shard": 1006,
            "license/matlab": 1007}


def step(name: str, *, elapsed: int, cpu: tuple[int, int], state: str = "COMPLETED",
         start: int | None = None, end: int | None = None, mem_total: int = 0,
         mem_max: int = 0, energy: int | None = 0, usage: dict[str, int] | None = None,
         exit: tuple[int, int] = (0, 0), tasks: int = 1) -> dict[str, Any]:
    return {"name": name, "elapsed": elapsed, "cpu": cpu, "state": state, "start": start,
            "end": end, "mem_total": mem_total, "mem_max": mem_max, "energy": energy,
            "usage": usage or {}, "exit": exit, "tasks": tasks}


def job(job_id: int, name: str, *, submit: int, eligible: int | None, start: int | None,
        end: int | None, elapsed: int, state: str, tres: dict[str, int] | None,
        limit: int | None = 60, steps: list | None = None, exit: tuple[int, int] = (0, 0),
        derived: tuple[int, int] = (0, 0), array: tuple[int, int | None, str, int] | None = None,
        het: tuple[int, int] | None = None, nodes: str = "n01", user: str = "alice",
        account: str = "physics", partition: str = "gpu", qos: str = "normal",
        flags: list[str] | None = None, kill_user: str | None = None,
        suspended: int = 0, restarts: int = 0, db_index: int = 0) -> dict[str, Any]:
    """One accounting record. ``state`` is the sacct word, or ``BASE+FLAG`` for a state
    that carries a flag (``PENDING+REQUEUED``); ``tres`` None is no allocation.
    ``array`` is (array_job_id, task_id or None, pending task list, max running)."""
    return {"job_id": job_id, "name": name, "submit": submit, "eligible": eligible,
            "start": start, "end": end, "elapsed": elapsed, "state": state, "tres": tres,
            "limit": limit, "steps": steps or [], "exit": exit, "derived": derived,
            "array": array, "het": het, "nodes": nodes, "user": user, "account": account,
            "partition": partition, "qos": qos, "flags": flags or ["STARTED_ON_SCHEDULE"],
            "kill_user": kill_user, "suspended": suspended, "restarts": restarts,
            "db_index": db_index or (DB_INDEX_BASE + job_id)}


GIB = 1024 ** 3
# DBIndex as 24.11 assigns them (above 2^63); only v0.0.45 prints it (as its SLUID).
DB_INDEX_BASE = 18200885663903094784
CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def sluid(number: int) -> str:
    """A SLUID as v0.0.45 prints one: "s" and the number in 13 Crockford base32 digits."""
    digits = ""
    for _ in range(13):
        number, rest = divmod(number, 32)
        digits = CROCKFORD[rest] + digits
    return "s" + digits
MIB = 1024 ** 2

SCENARIO: list[dict[str, Any]] = [
    job(101, "cpu-only", submit=T, eligible=T, start=T + 10, end=T + 610, elapsed=600,
        state="COMPLETED", partition="cpu",
        tres={"billing": 4, "cpu": 4, "mem": 8192, "node": 1},
        steps=[step("batch", elapsed=600, cpu=(500, 500000), mem_total=100 * MIB,
                    mem_max=100 * MIB, usage={"fs/disk": 8423, "vmem": 300 * MIB, "pages": 0}),
               step("extern", elapsed=600, cpu=(0, 1000), mem_total=0, mem_max=0),
               step("0", elapsed=590, cpu=(1800, 250000), mem_total=4 * GIB, mem_max=2 * GIB,
                    tasks=2)]),
    job(102, "a100-pair", submit=T + 5, eligible=T + 5, start=T + 20, end=T + 3620,
        elapsed=3600, state="COMPLETED", limit=120,
        tres={"billing": 20, "cpu": 8, "energy": 540000, "gres/gpu": 2, "gres/gpu:a100": 2,
              "gres/gpumem": 163840, "gres/gpuutil": 200, "mem": 65536, "node": 1},
        steps=[step("batch", elapsed=3600, cpu=(7000, 123456), mem_total=20 * GIB,
                    mem_max=20 * GIB, energy=540000,
                    usage={"energy": 540000, "fs/disk": 123456789, "gres/gpumem": 40960,
                           "gres/gpuutil": 87}),
               step("extern", elapsed=3600, cpu=(0, 2000))]),
    job(103, "h100-and-untyped", submit=T + 6, eligible=T + 6, start=T + 30, end=T + 630,
        elapsed=600, state="COMPLETED",
        tres={"billing": 15, "cpu": 6, "gres/gpu": 3, "gres/gpu:h100": 2, "mem": 32768,
              "node": 1},
        steps=[step("batch", elapsed=600, cpu=(100, 0), mem_total=GIB, mem_max=GIB)]),
    job(104, "untyped-gpu", submit=T + 7, eligible=T + 7, start=T + 40, end=T + 100,
        elapsed=60, state="COMPLETED", limit=None,
        tres={"billing": 3, "cpu": 2, "gres/gpu": 1, "mem": 4096, "node": 1},
        steps=[step("batch", elapsed=60, cpu=(59, 999999), mem_total=MIB, mem_max=MIB)]),
    job(105, "shards-licenses", submit=T + 8, eligible=T + 8, start=T + 50, end=T + 80,
        elapsed=30, state="COMPLETED", partition="cpu",
        tres={"billing": 1, "cpu": 1, "gres/shard": 4, "license/matlab": 2, "mem": 1024,
              "node": 1},
        steps=[step("batch", elapsed=30, cpu=(1, 500), mem_total=MIB, mem_max=MIB)]),
    job(201, "array", submit=T + 60, eligible=T + 60, start=T + 61, end=T + 71, elapsed=10,
        state="COMPLETED", array=(200, 1, "", 2), partition="cpu",
        tres={"billing": 1, "cpu": 1, "mem": 512, "node": 1},
        steps=[step("batch", elapsed=10, cpu=(9, 0), mem_total=MIB, mem_max=MIB)]),
    job(202, "array", submit=T + 60, eligible=T + 60, start=T + 62, end=T + 64, elapsed=2,
        state="FAILED", array=(200, 2, "", 2), partition="cpu", exit=(2, 0), derived=(2, 0),
        tres={"billing": 1, "cpu": 1, "mem": 512, "node": 1},
        steps=[step("batch", elapsed=2, cpu=(0, 4000), state="FAILED", exit=(2, 0),
                    mem_total=MIB, mem_max=MIB)]),
    job(200, "array", submit=T + 60, eligible=T + 60, start=None, end=None, elapsed=0,
        state="PENDING", array=(200, None, "3-5", 2), partition="cpu", tres=None,
        nodes="None assigned", flags=[]),
    job(300, "het", submit=T + 90, eligible=T + 90, start=T + 95, end=T + 195, elapsed=100,
        state="COMPLETED", het=(300, 0),
        tres={"billing": 2, "cpu": 2, "mem": 2048, "node": 1},
        steps=[step("batch", elapsed=100, cpu=(50, 0), mem_total=MIB, mem_max=MIB)]),
    job(301, "het", submit=T + 90, eligible=T + 90, start=T + 95, end=T + 195, elapsed=100,
        state="COMPLETED", het=(300, 1), nodes="n02",
        tres={"billing": 5, "cpu": 1, "gres/gpu": 1, "gres/gpu:a100": 1, "mem": 1024,
              "node": 1},
        steps=[step("0", elapsed=98, cpu=(97, 0), mem_total=2 * MIB, mem_max=2 * MIB)]),
    job(400, "requeued", submit=T + 100, eligible=T + 100, start=T + 110, end=T + 170,
        elapsed=60, state="PENDING+REQUEUED", partition="cpu",
        tres={"billing": 1, "cpu": 1, "mem": 1024, "node": 1},
        steps=[step("batch", elapsed=60, cpu=(30, 0), state="CANCELLED", exit=(0, 15),
                    mem_total=3 * MIB, mem_max=3 * MIB)]),
    job(400, "requeued", submit=T + 171, eligible=T + 291, start=T + 300, end=T + 400,
        elapsed=100, state="COMPLETED", partition="cpu", restarts=1,
        db_index=DB_INDEX_BASE + 4000,
        tres={"billing": 1, "cpu": 1, "mem": 1024, "node": 1},
        steps=[step("batch", elapsed=100, cpu=(99, 0), mem_total=4 * MIB, mem_max=4 * MIB)]),
    job(500, "running", submit=T + 200, eligible=T + 200, start=T + 210, end=None,
        elapsed=300, state="RUNNING", flags=["STARTED_ON_SCHEDULE"],
        tres={"billing": 4, "cpu": 4, "mem": 8192, "node": 1},
        steps=[step("batch", elapsed=300, cpu=(0, 0), state="RUNNING", end=None),
               step("extern", elapsed=300, cpu=(0, 0), state="RUNNING", end=None)]),
    job(600, "cancelled-pending", submit=T + 300, eligible=T + 300, start=None, end=T + 360,
        elapsed=0, state="CANCELLED", tres=None, nodes="None assigned", kill_user="alice",
        flags=[]),
    job(700, "interactive", submit=T + 400, eligible=T + 400, start=T + 401, end=T + 521,
        elapsed=120, state="COMPLETED", partition="cpu",
        tres={"billing": 2, "cpu": 2, "mem": 2048, "node": 1},
        steps=[step("interactive", elapsed=120, cpu=(2, 0), mem_total=5 * MIB, mem_max=5 * MIB),
               step("extern", elapsed=120, cpu=(0, 0)),
               step("0", elapsed=60, cpu=(58, 0), mem_total=10 * MIB, mem_max=10 * MIB)]),
    job(800, "timeout", submit=T + 500, eligible=T + 500, start=T + 501, end=T + 561,
        elapsed=60, state="TIMEOUT", limit=1, partition="cpu", exit=(0, 15),
        tres={"billing": 1, "cpu": 1, "mem": 1024, "node": 1},
        steps=[step("batch", elapsed=60, cpu=(59, 0), state="CANCELLED", exit=(0, 15),
                    mem_total=MIB, mem_max=MIB)]),
]


# --------------------------------------------------------------------------- shapes

def no_val(number: int | None, *, infinite: bool = False) -> dict[str, Any]:
    """UINT32_NO_VAL / UINT64_NO_VAL / TIMESTAMP_NO_VAL as data_parser dumps them."""
    if infinite:
        return {"set": False, "infinite": True, "number": 0}
    if number is None:
        return {"set": False, "infinite": False, "number": 0}
    return {"set": True, "infinite": False, "number": number}


def opt_number(v: int, number: int | None, *, infinite: bool = False) -> Any:
    """A NO_VAL-able number: null (dbv0.0.3N) or wrapped (v0.0.39+)."""
    if v >= 39:
        return no_val(number, infinite=infinite)
    return None if (number is None or infinite) else number


def tres_list(v: int, tres: dict[str, int] | None) -> list[dict[str, Any]]:
    out = []
    for key, count in sorted((tres or {}).items(), key=lambda kv: TRES_IDS[kv[0]]):
        kind, _, name = key.partition("/")
        out.append({"type": kind, "name": name if name else (None if v <= 38 else ""),
                    "id": TRES_IDS[key], "count": count})
    return out


def usage_list(v: int, mem: int, cpu_ms: int, extra: dict[str, int], *, node: str | None
               ) -> list[dict[str, Any]]:
    values = {"cpu": cpu_ms, "mem": mem, "energy": extra.get("energy", 0)}
    values.update({k: c for k, c in extra.items() if k != "energy"})
    out = tres_list(v, values)
    if node is not None:                       # min/max lists name the task and node
        for entry in out:
            entry.update({"task": 0, "node": node})
    return out


def state(v: int, word: str) -> Any:
    base, _, flag = word.partition("+")
    if v <= 38:
        return flag or base                    # job_state_string(): the flag wins
    return [base, flag] if flag else [base]


def exit_code(v: int, code: tuple[int, int], *, pending: bool = False) -> dict[str, Any]:
    rc, signal = code
    if v <= 38:
        if signal:
            return {"status": "SIGNALED", "return_code": 0,
                    "signal": {"signal_id": signal, "name": "TERM"}}
        return {"status": "SUCCESS" if rc == 0 else "FAILED", "return_code": rc}
    if pending:
        return {"status": ["PENDING"], "return_code": no_val(None),
                "signal": {"id": no_val(None), "name": ""}}
    if signal:
        return {"status": ["SIGNALED"], "return_code": no_val(None),
                "signal": {"id": no_val(signal), "name": "TERM"}}
    return {"status": ["SUCCESS" if rc == 0 else "ERROR"], "return_code": no_val(rc),
            "signal": {"id": no_val(None), "name": ""}}


def cpu_time(seconds: int, micro: int) -> dict[str, int]:
    return {"seconds": seconds, "microseconds": micro}


def render_step(v: int, j: dict[str, Any], s: dict[str, Any]) -> dict[str, Any]:
    start = s["start"] if s["start"] is not None else j["start"]
    end = s["end"] if "end" in s and s["end"] is not None else (
        None if s["state"] == "RUNNING" else j["end"])
    node = j["nodes"]
    sec, usec = s["cpu"]
    cpu_ms = sec * 1000 + usec // 1000
    if v <= 38:
        step_id: Any = int(s["name"]) if s["name"].isdigit() else s["name"]
        ident: dict[str, Any] = {"job_id": j["job_id"], "het": {"component": None},
                                 "id": step_id, "name": s["name"]}
        times: dict[str, Any] = {"elapsed": s["elapsed"], "end": end or 0, "start": start or 0,
                                 "suspended": 0}
        energy: Any = s["energy"]
    else:
        ident = {"id": f"{j['job_id']}.{s['name']}", "name": s["name"]}
        if v >= 40:
            times = {"elapsed": s["elapsed"], "end": no_val(end), "start": no_val(start),
                     "suspended": 0}
            energy = no_val(s["energy"])
        else:
            times = {"elapsed": s["elapsed"], "end": end or 0, "start": start or 0,
                     "suspended": 0}
            energy = s["energy"]
    times.update({"system": cpu_time(0, 0), "total": cpu_time(sec, usec),
                  "user": cpu_time(sec, usec)})
    if v >= 43:
        times["limit"] = no_val(None, infinite=True)
        ident.update({"stderr": "", "stdin": "", "stdout": "", "stderr_expanded": "",
                      "stdin_expanded": "", "stdout_expanded": ""})
    alloc = {k: c for k, c in (j["tres"] or {}).items() if k in ("cpu", "mem", "node")}
    out: dict[str, Any] = {
        "nodes": {"count": 1, "range": node, "list": [node]},
        "tres": {
            "requested": {
                "max": usage_list(v, s["mem_max"], cpu_ms, s["usage"], node=node),
                "min": usage_list(v, s["mem_max"], cpu_ms, {}, node=node)[:2],
                "average": usage_list(v, s["mem_max"], cpu_ms, {}, node=None)[:2],
                "total": usage_list(v, s["mem_total"], cpu_ms, s["usage"], node=None),
            },
            "consumed": {"max": [], "min": [], "average": [], "total": []},
            "allocated": tres_list(v, alloc),
        },
        "time": times,
        "exit_code": exit_code(v, s["exit"]),
        "tasks": {"count": s["tasks"]},
        "pid": None if v <= 38 else "",
        "CPU": {"requested_frequency": {"min": opt_number(v, None), "max": opt_number(v, None)},
                "governor": []},
        "kill_request_user": None if v <= 38 else "",
        "state": state(v, s["state"]),
        "statistics": {"CPU": {"actual_frequency": 0}, "energy": {"consumed": energy}},
        "step": ident,
        "task": {"distribution": "Block" if v >= 39 else "Unknown"},
    }
    return out


def render_job(v: int, j: dict[str, Any]) -> dict[str, Any]:
    array_job, task_id, task_str, max_running = j["array"] or (0, None, "", 0)
    het_job, het_offset = j["het"] or (0, None)
    start = j["start"]
    if v <= 37:
        start = j["eligible"]                  # parse.c: eligible -> "time/start"
    pending = j["state"] == "PENDING"
    steps = [render_step(v, j, s) for s in j["steps"]]
    total_us = sum(s["cpu"][0] * 1_000_000 + s["cpu"][1] for s in j["steps"])
    job_total = cpu_time(0, 0) if v <= 38 else cpu_time(total_us // 1_000_000,
                                                        total_us % 1_000_000)
    times: dict[str, Any] = {
        "elapsed": j["elapsed"], "eligible": j["eligible"] or 0, "end": j["end"] or 0,
        "start": start or 0, "submission": j["submit"], "suspended": j["suspended"],
        "system": cpu_time(0, 0),
        "limit": opt_number(v, j["limit"], infinite=j["limit"] is None),
        "total": job_total, "user": job_total,
    }
    if v >= 41:
        planned = (j["start"] - j["eligible"]) if j["start"] and j["eligible"] else None
        times["planned"] = no_val(planned)
    reason_key = "previous" if v == 36 else "reason"
    out: dict[str, Any] = {
        "account": j["account"],
        "comment": {"administrator": None if v <= 38 else "", "job": None if v <= 38 else "",
                    "system": None if v <= 38 else ""},
        "allocation_nodes": 0 if j["tres"] is None else j["tres"].get("node", 1),
        "array": {
            "job_id": array_job,
            "limits": {"max": {"running": {"tasks": max_running}}},
            "task": (task_str or None) if v <= 38 else task_str,
            "task_id": opt_number(v, task_id),
        },
        "association": {"account": j["account"], "cluster": CLUSTER, "partition": None,
                        "user": j["user"]},
        "cluster": CLUSTER,
        "constraints": "",
        "container": None if v <= 38 else "",   # not printed by 36/37 (dropped below)
        "derived_exit_code": exit_code(v, j["derived"], pending=pending),
        "time": times,
        "exit_code": exit_code(v, j["exit"], pending=pending),
        "flags": j["flags"],
        "group": "physics",
        "het": {"job_id": het_job, "job_offset": opt_number(v, het_offset)},
        "job_id": j["job_id"],
        "name": j["name"],
        "mcs": {"label": ""},
        "nodes": j["nodes"],
        "partition": j["partition"],
        "priority": opt_number(v, 4294901755 if v <= 38 else 1000),
        "qos": j["qos"],
        "required": ({"CPUs": (j["tres"] or {}).get("cpu", 1), "memory": 1024} if v <= 38 else
                     {"CPUs": (j["tres"] or {}).get("cpu", 1),
                      "memory_per_cpu": no_val(None), "memory_per_node": no_val(1024)}),
        "kill_request_user": j["kill_user"] if v <= 38 else (j["kill_user"] or ""),
        "reservation": {"id": 0, "name": 0 if v <= 38 else ""},
        "state": {"current": state(v, j["state"]), reason_key: "None"},
        "steps": steps,
        "tres": {"allocated": tres_list(v, j["tres"]), "requested": tres_list(v, j["tres"])},
        "user": j["user"],
        "wckey": {"wckey": "", "flags": []},
        "working_directory": "/home/alice",
    }
    if v <= 37:
        del out["container"]
    if v >= 39:
        out.update({"block": "", "extra": "", "failed_node": "", "licenses": "",
                    "script": "", "submit_line": f"sbatch {j['name']}.sh", "used_gres": ""})
        out["hold"] = False
    if v >= 41:
        out.update({"stdin": "/dev/null", "stdout": "/home/alice/slurm-%j.out",
                    "stderr": "/home/alice/slurm-%j.out"})
    if v >= 41:
        out.update({"stdin_expanded": "/dev/null", "stdout_expanded": "/home/alice/slurm-1.out",
                    "stderr_expanded": "/home/alice/slurm-1.out"})
    if v >= 42:
        out.update({"qosreq": "", "restart_cnt": j["restarts"]})
    if v >= 43:
        out["segment_size"] = 0
    if v >= 45:
        out.update({"sluid": sluid(j["db_index"]), "original_sluid": sluid(j["db_index"]),
                    "exclusive": "NO", "oversubscribe": "NO"})
        out["reservation"]["requested"] = ""
    return out


def meta(v: int) -> dict[str, Any]:
    release = RELEASES[v]
    major, minor, micro = release.split(".")
    if v <= 38:
        return {"plugin": {"type": f"openapi/dbv0.0.{v}", "name": f"Slurm OpenAPI DB v0.0.{v}"},
                "Slurm": {"version": {"major": int(major), "micro": int(micro),
                                      "minor": int(minor)}, "release": release}}
    version: dict[str, Any] = {"major": major, "micro": micro, "minor": minor}
    out: dict[str, Any] = {
        "plugin": {"type": "", "name": "", "data_parser": f"data_parser/v0.0.{v}",
                   "accounting_storage": "accounting_storage/slurmdbd"},
        "client": {"source": "/dev/pts/0", "user": "root", "group": "root"},
        "command": ["sacct", "--json"],
    }
    if v == 39:
        out["Slurm"] = {"version": {k: int(x) for k, x in version.items()}, "release": release}
    else:
        out["slurm"] = {"version": version, "release": release, "cluster": CLUSTER}
    return out


def render(v: int) -> dict[str, Any]:
    doc: dict[str, Any] = {"meta": meta(v)}
    doc["errors"] = []
    if v >= 39:
        doc["warnings"] = []
    doc["jobs"] = [render_job(v, j) for j in SCENARIO]
    return doc


def text(v: int) -> str:
    """The document as JSON: its head indented, one job object per line (compact, and a
    change to one job is a one-line diff)."""
    doc = render(v)
    jobs = doc.pop("jobs")
    head = json.dumps(doc, indent=1)[:-2]
    lines = ",\n".join("  " + json.dumps(j, separators=(",", ":")) for j in jobs)
    return f'{head},\n "jobs": [\n{lines}\n ]\n}}\n'



def main(argv: list[str]) -> int:
    for v in VERSIONS:
        path = HERE / f"v0.0.{v}" / "sacct.json"
        path.parent.mkdir(exist_ok=True)
        path.write_text(text(v), encoding="utf-8")
        print(f"wrote {path.relative_to(HERE)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
