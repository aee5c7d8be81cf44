#!/usr/bin/env python3
"""A fake ``scontrol`` for tests.

* ``show partition -o`` prints FAKE_SCONTROL_DATA (default
  tests/fixtures/scontrol-show-partition.txt), written in the format of Slurm 22.05's
  ``scontrol --oneliner show partition``, with the lab's batch partition line (deploy/lab
  slurm.conf: TRESBillingWeights="CPU=1.0,Mem=0.25G,GRES/gpu=2.0").
* ``show node`` (with any of ``-o/--oneliner``, ``-a/--all``, ``-d/--details``) prints
  FAKE_SCONTROL_NODES (default tests/fixtures/scontrol-show-node.txt). That fixture is
  hand-written in the format of Slurm 22.05's ``scontrol --all --details --oneliner show
  node`` (src/api/node_info.c of 22.05: the pairs of each node joined by spaces, the OS
  line with its spaces, GresUsed with device indexes, Reason=... [user@time] last); its
  first line is the lab's node (CPUs=8, RealMemory=16000, Gres=gpu:4). It was not captured
  from a real slurmctld: the real command is exercised against the lab in the real-Slurm
  tests.

FAKE_SCONTROL_MODE=fail makes either command fail like an unreachable slurmctld.
"""
import os
import sys
from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
DEFAULT = FIXTURES / "scontrol-show-partition.txt"
DEFAULT_NODES = FIXTURES / "scontrol-show-node.txt"

args = [a for a in sys.argv[1:] if not a.startswith("--clusters")]
words = [a for a in args if a not in ("-o", "--oneliner")]
node_words = [a for a in words if a not in ("-a", "--all", "-d", "--details")]
if node_words in (["show", "node"], ["show", "nodes"]):
    if os.environ.get("FAKE_SCONTROL_MODE") == "fail":
        sys.stderr.write("slurm_load_node error: Unable to contact slurm controller (connect failure)\n")
        sys.exit(1)
    sys.stdout.write(Path(os.environ.get("FAKE_SCONTROL_NODES") or DEFAULT_NODES).read_text())
    sys.exit(0)
if os.environ.get("FAKE_SCONTROL_MODE") == "fail":
    sys.stderr.write("slurm_load_partitions: Unable to contact slurm controller (connect failure)\n")
    sys.exit(1)
if words != ["show", "partition"]:
    sys.stderr.write(f"fake scontrol: unsupported arguments {sys.argv[1:]}\n")
    sys.exit(2)
sys.stdout.write(Path(os.environ.get("FAKE_SCONTROL_DATA") or DEFAULT).read_text())
