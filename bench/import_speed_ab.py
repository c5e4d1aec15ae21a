"""A/B of `bench/import_speed.py` (100,000 rows) between another checkout (A, e.g. main before a change) and
this one (B), alternately (A B A B ...), each import in a fresh process. Prints every round and
`ratio=<median of B/A> (min x, max y, rounds N)` last (above 1: B is slower).

    git archive main | tar -x -C /tmp/ftstudio-a && mkdir -p /tmp/ftstudio-a/var \\
        && ln -s "$PWD/var/models" /tmp/ftstudio-a/var/models
    python bench/import_speed_ab.py /tmp/ftstudio-a [--rounds 3] [--rows 100000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _rounds import add_rounds_argument, alternate  # noqa: E402

HERE = Path(__file__).resolve().parent.parent


def run(repo: Path, rows: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(repo)}
    out = subprocess.run(
        [sys.executable, "bench/import_speed.py", str(rows)],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.strip().splitlines()[-1].split("=")[1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("other", type=Path, help="the other checkout (side A)")
    add_rounds_argument(parser)
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    other = args.other.resolve()
    print(f"A={other} B={HERE} rows={args.rows} rounds={args.rounds}", flush=True)
    alternate(
        args.rounds,
        lambda n: run(other, args.rows),
        lambda n: run(HERE, args.rows),
        ratio=lambda a, b: b / a,
        describe=lambda a, b: f"A {a:.1f} s, B {b:.1f} s (ratio B/A)",
    )


if __name__ == "__main__":
    main()
