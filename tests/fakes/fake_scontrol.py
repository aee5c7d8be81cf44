#!/usr/bin/env python3
"""A fake ``scontrol`` for tests: ``show partition -o`` prints FAKE_SCONTROL_DATA.

The default data (tests/fixtures/scontrol-show-partition.txt) is written in the format of
Slurm 22.05's ``scontrol --oneliner show partition``, with the lab's batch partition line
(deploy/lab slurm.conf: TRESBillingWeights="CPU=1.0,Mem=0.25G,GRES/gpu=2.0"). The real
command is exercised against the lab in the real-Slurm tests.
"""
import os
import sys
from pathlib import Path

DEFAULT = Path(__file__).resolve().parents[1] / "fixtures" / "scontrol-show-partition.txt"

args = [a for a in sys.argv[1:] if not a.startswith("--clusters")]
if os.environ.get("FAKE_SCONTROL_MODE") == "fail":
    sys.stderr.write("slurm_load_partitions: Unable to contact slurm controller (connect failure)\n")
    sys.exit(1)
if [a for a in args if a not in ("-o", "--oneliner")] != ["show", "partition"]:
    sys.stderr.write(f"fake scontrol: unsupported arguments {sys.argv[1:]}\n")
    sys.exit(2)
sys.stdout.write(Path(os.environ.get("FAKE_SCONTROL_DATA") or DEFAULT).read_text())
