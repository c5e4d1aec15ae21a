"""Memory and refusal time of the streaming importer (issue 11, item 1).

Two figures, each measured in a fresh child process per round (3 rounds by default), on SQLite in a temp dir
(set DATABASE_URL=postgres://... to measure PostgreSQL):

* ``peak_growth_mb``: importing a ~200 MB file of valid OpenAI-format rows (what the background task
  ``datasets.import_file`` runs, and what the request runs for small uploads) grows the importing process's
  peak resident memory by this much. Measured from the kernel's high-water mark: the child warms Django and the
  tokenizer, resets the mark (``echo 5 > /proc/self/clear_refs``), reads its current RSS, imports, then reads
  ``VmHWM`` from ``/proc/self/status``; growth = VmHWM - RSS before. Target: < 300 MB.
* ``refuse_s``: a 50 MB file holding one single line is refused (a line-numbered error, nothing written) in this
  many seconds. Target: < 2 s.

    python bench/import_memory.py [SIZE_MB] [ROUNDS]

Prints every round, then `peak_growth_mb=median (min-max) refuse_s=median (min-max)` last.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _curation import REPO, conversation  # noqa: E402

SIZE_MB = float(sys.argv[1]) if len(sys.argv) > 1 and not sys.argv[1].startswith("--") else 200.0
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 and not sys.argv[1].startswith("--") else 3


def _status_kb(field: str) -> int:
    for row in Path("/proc/self/status").read_text().splitlines():
        if row.startswith(field + ":"):
            return int(row.split()[1])
    raise KeyError(field)


def child(kind: str, path: str) -> None:
    """One measurement in this (fresh) process: prints a JSON line."""
    import io

    from _curation import bench_project, setup_django

    tmp = tempfile.mkdtemp(prefix="ftstudio-bench-mem-")
    try:
        setup_django(tmp)
        from apps.datasets import importing
        from apps.datasets.tokens import get_token_counter

        get_token_counter()
        project = bench_project(f"bench-mem-{os.getpid()}")
        warm = b'{"messages": [{"role": "user", "content": "warm up"}, {"role": "assistant", "content": "ok"}]}\n'
        assert importing.import_examples(project=bench_project("warm"), path_or_file=io.BytesIO(warm)).ok
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS high-water mark
        before = _status_kb("VmRSS")
        started = time.perf_counter()
        report = importing.import_examples(project=project, path_or_file=path)
        seconds = time.perf_counter() - started
        peak = _status_kb("VmHWM")
        result = {
            "kind": kind,
            "seconds": seconds,
            "growth_mb": (peak - before) / 1024,
            "rss_before_mb": before / 1024,
            "imported": report.imported,
            "errors": [str(e)[:120] for e in report.errors[:3]],
        }
        print(json.dumps(result))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_valid(path: Path, size_mb: float) -> int:
    import random

    rng = random.Random(0)
    target = size_mb * 1e6
    n = 0
    with open(path, "w") as fh:
        while fh.tell() < target:
            fh.write(json.dumps({"messages": conversation(rng, n)}) + "\n")
            n += 1
    return n


def write_one_line(path: Path, size_mb: float) -> None:
    chunk = "Where is my parcel? " * 5000
    with open(path, "w") as fh:
        fh.write('{"messages": [{"role": "user", "content": "')
        while fh.tell() < size_mb * 1e6:
            fh.write(chunk)
        fh.write('"}, {"role": "assistant", "content": "Hi"}]}\n')


def measure(kind: str, path: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, __file__, "--child", kind, str(path)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def summary(values: list[float], fmt: str) -> str:
    return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="ftstudio-bench-files-"))
    try:
        valid, one_line = work / "valid.jsonl", work / "one-line.jsonl"
        rows = write_valid(valid, SIZE_MB)
        write_one_line(one_line, 50)
        print(
            f"valid file: {valid.stat().st_size / 1e6:.1f} MB, {rows:,} rows; one-line file: "
            f"{one_line.stat().st_size / 1e6:.1f} MB"
        )
        growth, refuse = [], []
        for r in range(1, ROUNDS + 1):
            big = measure("valid", valid)
            assert big["imported"] == rows and not big["errors"], big
            bad = measure("one_line", one_line)
            assert bad["imported"] == 0 and bad["errors"] and "over the" in bad["errors"][0], bad
            growth.append(big["growth_mb"])
            refuse.append(bad["seconds"])
            print(
                f"round {r}: valid {SIZE_MB:.0f} MB imported {big['imported']:,} rows in {big['seconds']:.1f} s, "
                f"peak RSS growth {big['growth_mb']:.0f} MB (from {big['rss_before_mb']:.0f} MB); "
                f"50 MB single line refused in {bad['seconds']:.3f} s ({bad['errors'][0][:60]}...)"
            )
        print(f"peak_growth_mb={summary(growth, '.0f')} refuse_s={summary(refuse, '.3f')}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3])
    else:
        main()
