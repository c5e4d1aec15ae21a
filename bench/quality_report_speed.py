"""The quality report over 100,000 generated examples, 2% of them flawed (every check: duplicates, MinHash
near-duplicates,
conflicts, empty/short/long outputs, personal data, leakage). SQLite in a temp dir unless DATABASE_URL
is set. Prints `seconds=X` last (budget: 60 s)."""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _curation import bench_project, setup_django, write_flawed_jsonl, write_openai_jsonl  # noqa: E402

N = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000


def main() -> None:
    tmp = setup_django()
    from django.db import connection

    from apps.datasets import importing, services, versions

    project = bench_project("bench-quality")
    flawed = N // 50  # 2% of the examples carry a problem (twins, conflicts, personal data, short answers)
    report = importing.import_examples(
        project=project, path_or_file=write_openai_jsonl(Path(tmp) / "rows.jsonl", N - flawed)
    )
    assert report.ok and report.imported == N - flawed
    report = importing.import_examples(
        project=project, path_or_file=write_flawed_jsonl(Path(tmp) / "flawed.jsonl", flawed)
    )
    assert report.ok and report.imported == flawed
    started = time.perf_counter()
    counts = versions.assign_splits(project=project, seed=0)
    print(f"assign_splits over {N} examples: {time.perf_counter() - started:.1f}s {counts}")
    started = time.perf_counter()
    quality = services.run_quality_report(project=project)
    seconds = time.perf_counter() - started
    assert quality.status == "done" and quality.example_count == N
    print(f"database={connection.vendor} examples={N} findings={quality.findings.count()} summary={quality.summary}")
    if connection.vendor != "sqlite":
        project.delete()
    print(f"seconds={seconds:.1f}")


if __name__ == "__main__":
    main()
