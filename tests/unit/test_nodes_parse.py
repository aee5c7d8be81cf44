"""``scontrol show node`` parsing (collector.slurm.nodes) and the fake scontrol's node answer.

tests/fixtures/scontrol-show-node.txt is hand-written in the format of Slurm 22.05's
``scontrol --all --details --oneliner show node`` (src/api/node_info.c of 22.05: each
node's multi-line record joined by spaces, CPUEfctv new in 22.05, the OS line with spaces,
GresUsed with device indexes, ``Reason=... [user@time]`` last); it was not captured from a
real slurmctld. Its first node is the lab's (deploy/lab slurm.conf). The real command is
exercised against the lab in the real-Slurm tests. Expected values are read off the
fixture lines by hand.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from collector.slurm.nodes import (NodeInfo, NodeParseError, node_argv, parse_node_line,
                                   parse_nodes, read_nodes)
from collector.slurm.source import SlurmCommandError
from tests.helpers import executable_wrapper

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "scontrol-show-node.txt"
FAKE = ROOT / "tests" / "fakes" / "fake_scontrol.py"
MIB = 2**20


def by_name(nodes: list[NodeInfo]) -> dict[str, NodeInfo]:
    return {n.name: n for n in nodes}


def test_the_fixture_has_the_22_05_shape():
    lines = FIXTURE.read_text().splitlines()
    assert lines and all(line.startswith("NodeName=") for line in lines)
    for line in lines:
        assert "CPUEfctv=" in line                      # new in 22.05
        assert "ResumeAfterTime=" not in line           # new in 23.02
        keys = ["NodeName=", "CPUAlloc=", "Gres=", "RealMemory=", "State=", "CfgTRES=",
                "AllocTRES=", "ExtSensorsJoules="]
        assert [line.index(k) for k in keys] == sorted(line.index(k) for k in keys)


def test_fixture_nodes():
    errors: list[NodeParseError] = []
    nodes = by_name(parse_nodes(FIXTURE.read_text().splitlines(), errors=errors))
    assert errors == []
    assert list(nodes) == ["vm", "gpu01", "gpu02", "cn001", "cn002", "cn003", "spare01"]
    # The lab node: untyped GPUs, two partitions, an OS value with spaces before RealMemory.
    assert nodes["vm"] == NodeInfo(
        name="vm", partitions=("batch", "debug"), state="MIXED", state_raw="MIXED",
        cpus_total=8, cpus_alloc=2, mem_total_bytes=16000 * MIB, mem_alloc_bytes=1024 * MIB,
        gpus_total=(("untyped", 4),), gpus_alloc=(("untyped", 1),), reason=None)
    # CoreSpecCount=2: CPUEfctv 62 of CPUTot 64; two GPU types, one with nothing in use.
    gpu01 = nodes["gpu01"]
    assert (gpu01.cpus_total, gpu01.cpus_alloc) == (62, 16)
    assert gpu01.gpus_total == (("a100", 2), ("v100", 2))
    assert gpu01.gpus_alloc == (("a100", 1), ("v100", 0))
    assert (gpu01.mem_total_bytes, gpu01.mem_alloc_bytes) == (515000 * MIB, 65536 * MIB)
    # IDX:0,2-3 holds a comma inside the parentheses.
    assert nodes["gpu02"].gpus_alloc == (("a100", 3),)
    assert nodes["gpu02"].partitions == ("gpu", "batch")


def test_states_flags_and_reasons():
    nodes = by_name(parse_nodes(FIXTURE.read_text().splitlines()))
    cn001, cn002, cn003 = nodes["cn001"], nodes["cn002"], nodes["cn003"]
    assert (cn001.state, cn001.state_raw, cn001.flags) == ("IDLE", "IDLE+DRAIN", ("DRAIN",))
    assert cn001.reason == "Kernel upgrade, reboot pending"
    # A reason holding "=", "State=..." and brackets, then a Comment: the real State and
    # the counts come from before Reason=, the reason ends at its [user@time] stamp.
    assert (cn002.state, cn002.state_raw, cn002.cpus_alloc) == ("ALLOCATED", "ALLOCATED+DRAIN", 32)
    assert cn002.reason == "ECC errors: dimm=B3 count=12 State=check [ops]"
    # A node that never registered: no Arch, OS or Version; CPULoad and FreeMem N/A.
    assert (cn003.state, cn003.flags) == ("DOWN", ("NOT_RESPONDING",))
    assert (cn003.cpus_total, cn003.mem_total_bytes, cn003.reason) == (32, 192000 * MIB, "Not responding")
    assert (cn001.gpus_total, cn001.gpus_alloc) == ((), ())
    # In no partition: an empty tuple.
    assert nodes["spare01"].partitions == ()


LINE = ("NodeName=n1 Arch=x86_64 CoresPerSocket=4  CPUAlloc=3 CPUTot=8 CPULoad=1.00 "
        "AvailableFeatures=(null) ActiveFeatures=(null) Gres={gres} {used}NodeAddr=n1 "
        "NodeHostName=n1 Version=21.08.8 OS=Linux 5.10.0 #1 SMP Debian  RealMemory=4000 "
        "AllocMem=1000 FreeMem=2000 Sockets=1 Boards=1 State={state} ThreadsPerCore=1 "
        "TmpDisk=0 Weight=1 Owner=N/A MCS_label=N/A Partitions=p  BootTime=None "
        "SlurmdStartTime=None CfgTRES={cfg} AllocTRES={alloc} CapWatts=n/a "
        "CurrentWatts=0 AveWatts=0 ExtSensorsJoules=n/s ExtSensorsWatts=0 ExtSensorsTemp=n/s{tail}")


def line(gres="(null)", used="", state="IDLE", cfg="cpu=8,mem=4000M,billing=8",
         alloc="", tail="") -> str:
    return LINE.format(gres=gres, used=used, state=state, cfg=cfg, alloc=alloc, tail=tail)


def test_no_cpuefctv_uses_cputot():
    assert parse_node_line(line()).cpus_total == 8


def test_gpus_without_gres_used_come_from_alloc_tres():
    # Typed entries plus the untyped remainder, never both added (as for jobs).
    n = parse_node_line(line(gres="gpu:a100:2,gpu:2", alloc="cpu=3,gres/gpu=3,gres/gpu:a100=2"))
    assert n.gpus_total == (("a100", 2), ("untyped", 2))
    assert n.gpus_alloc == (("a100", 2), ("untyped", 1))
    # No Gres= GPUs: CfgTRES counts them.
    n = parse_node_line(line(cfg="cpu=8,mem=4000M,gres/gpu=4", alloc="gres/gpu=1"))
    assert (n.gpus_total, n.gpus_alloc) == ((("untyped", 4),), (("untyped", 1),))


def test_gres_used_forms():
    n = parse_node_line(line(gres="gpu:4(S:0-1),mps:400", used="GresUsed=gpu:(null):2(IDX:0-1),mps:0 "))
    assert (n.gpus_total, n.gpus_alloc) == ((("untyped", 4),), (("untyped", 2),))
    # GresUsed wins over AllocTRES (it has the types).
    n = parse_node_line(line(gres="gpu:h100:8(S:0-1)", used="GresUsed=gpu:h100:5(IDX:0,2,4-6) ",
                             alloc="cpu=3,gres/gpu=5"))
    assert n.gpus_alloc == (("h100", 5),)


def test_state_and_reason_variants():
    n = parse_node_line(line(state="IDLE+CLOUD+POWERED_DOWN"))
    assert (n.state, n.flags) == ("IDLE", ("CLOUD", "POWERED_DOWN"))
    # No [user@time] stamp: the reason ends where Comment= begins.
    n = parse_node_line(line(state="DOWN", tail=" Reason=rack 7 power work Comment=see INC-1"))
    assert n.reason == "rack 7 power work"
    # A reason set over several lines is printed on continuation lines; joined by spaces.
    n = parse_node_line(line(state="DOWN+DRAIN", tail=" Reason=line one [root@2026-11-01T10:00:00]        line two"))
    assert n.reason == "line one"


def test_bad_lines_are_reported_and_skipped(caplog):
    bad = line().replace("CPUTot=8", "CPUTot=eight")
    no_memory = line().replace("RealMemory=4000 ", "")
    bad_gpu = line(gres="gpu:a100:x")
    errors: list[NodeParseError] = []
    nodes = parse_nodes(["", "CLUSTER: lab", bad, no_memory, bad_gpu, line(), "No nodes in the system"],
                        errors=errors)
    assert [n.name for n in nodes] == ["n1"]
    assert [e.reason for e in errors] == ["CPUTot='eight' is not a non-negative integer",
                                          "no RealMemory=",
                                          "Gres: cannot read a GPU count from 'gpu:a100:x'"]
    # Without an errors list they are logged, never raised.
    assert parse_nodes([bad]) == []
    assert "CPUTot='eight'" in caplog.text
    with pytest.raises(NodeParseError):
        parse_node_line(bad)


def test_argv():
    assert node_argv("scontrol") == ["scontrol", "--all", "--details", "--oneliner", "show", "node"]
    assert node_argv("/opt/slurm/bin/scontrol", "lab") == [
        "/opt/slurm/bin/scontrol", "--clusters=lab", "--all", "--details", "--oneliner", "show", "node"]


def test_read_nodes_through_the_fake_scontrol(tmp_path, monkeypatch):
    scontrol = executable_wrapper(tmp_path / "bin", "scontrol", FAKE)
    nodes = read_nodes(str(scontrol), timeout_s=30, cluster="lab")
    assert nodes == parse_nodes(FIXTURE.read_text().splitlines())

    other = tmp_path / "nodes.txt"
    other.write_text(line() + "\n")
    monkeypatch.setenv("FAKE_SCONTROL_NODES", str(other))
    assert [n.name for n in read_nodes(str(scontrol), timeout_s=30)] == ["n1"]

    monkeypatch.setenv("FAKE_SCONTROL_MODE", "fail")
    with pytest.raises(SlurmCommandError) as err:
        read_nodes(str(scontrol), timeout_s=30)
    assert err.value.returncode == 1 and "slurm_load_node" in err.value.stderr
