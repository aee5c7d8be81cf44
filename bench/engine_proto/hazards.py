"""Write a copy of a sacct export with hostile lines, for the money check's fallback path.

    python -m bench.engine_proto.hazards IN OUT [--rate 0.02] [--seed 3]

About ``--rate`` of the records get one of: a ``|`` in JobName (ragged, repaired into the
last free-text column), a newline in JobName (a record split over two lines), TotalCPU
with four decimals, a fractional size (``1.5G``) in MaxRSS, an impossible Submit, an
underscore or a sign in a number, an empty State, a bad AllocTRES entry, a non-ASCII
digit, a blank line, a step moved below the next job, a truncated line. Same seed, same
file.
"""

from __future__ import annotations

import argparse
import random
import sys


def mutate(line: str, cols: dict[str, int], rng: random.Random) -> list[str]:
    f = line.rstrip("\n").split("|")
    kind = rng.randrange(12)
    if kind == 0:
        f[cols["JobName"]] += "|x"
    elif kind == 1:
        f[cols["JobName"]] += "\nwrapped"
    elif kind == 2 and f[cols["TotalCPU"]]:
        f[cols["TotalCPU"]] = "12:34.5678"
    elif kind == 3:
        f[cols["MaxRSS"]] = "1.5G"
    elif kind == 4:
        f[cols["Submit"]] = "2026-13-01T00:00:00"
    elif kind == 5:
        f[cols["ElapsedRaw"]] = rng.choice(["1_000", "+12", " 7"])
    elif kind == 6:
        f[cols["State"]] = ""
    elif kind == 7:
        f[cols["AllocTRES"]] = "cpu=x,mem=1G"
    elif kind == 8:
        f[cols["DBIndex"]] = "\u0663"          # ARABIC-INDIC DIGIT THREE
    elif kind == 9:
        return ["|".join(f) + "\n", "\n"]
    elif kind == 10:
        f[cols["TotalCPU"]] = "1-02:03"
    else:
        return ["|".join(f[: len(f) // 2]) + "\n"]
    return ["|".join(f) + "\n"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--rate", type=float, default=0.02)
    ap.add_argument("--seed", type=int, default=3)
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    with open(args.src, encoding="utf-8") as fin, open(args.dst, "w", encoding="utf-8") as out:
        header = fin.readline()
        out.write(header)
        cols = {name: i for i, name in enumerate(header.rstrip("\n").split("|"))}
        held: str | None = None
        for line in fin:
            is_step = "." in line.split("|", 1)[0]
            if held is not None and not is_step:
                out.write(line)           # the next job line first, then the held step
                out.write(held)
                held = None
                continue
            if is_step and rng.random() < args.rate / 10:
                held = line
                continue
            if rng.random() < args.rate:
                out.writelines(mutate(line, cols, rng))
            else:
                out.write(line)
        if held is not None:
            out.write(held)
    return 0


if __name__ == "__main__":
    sys.exit(main())
