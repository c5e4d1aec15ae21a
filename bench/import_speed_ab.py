"""A/B of `bench/import_speed.py` (100,000 rows) between another checkout (A, e.g. main before a change) and
this one (B), alternately, in fresh processes. Prints every round and `ratio=B/A` last (median, min-max).

    git archive main | tar -x -C /tmp/ftstudio-a && ln -s "$PWD/var/models" /tmp/ftstudio-a/var/models
    python bench/import_speed_ab.py /tmp/ftstudio-a [ROUNDS] [ROWS]
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent


def run(repo: Path, rows: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(repo)}
    out = subprocess.run([sys.executable, "bench/import_speed.py", rows], cwd=repo, env=env, capture_output=True,
                         text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1].split("=")[1])


def main() -> None:
    other = Path(sys.argv[1]).resolve()
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    rows = sys.argv[3] if len(sys.argv) > 3 else "100000"
    ratios = []
    for r in range(1, rounds + 1):
        a = run(other, rows)
        b = run(HERE, rows)
        ratios.append(b / a)
        print(f"round {r}: A {a:.1f} s, B {b:.1f} s, B/A {b / a:.2f}", flush=True)
    print(f"ratio={statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})")


if __name__ == "__main__":
    main()
