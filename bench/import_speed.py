"""Import 100,000 generated OpenAI-format rows through the real importer (validation, token counts with the
shipped SmolLM2 tokenizer, de-duplication, one transaction). SQLite in a temp dir by default; set
DATABASE_URL=postgres://... to measure PostgreSQL. Prints `seconds=X` last (budget: 30 s)."""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _curation import bench_project, setup_django, write_openai_jsonl  # noqa: E402

N = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000


def main() -> None:
    tmp = setup_django()
    from django.db import connection

    from apps.datasets import importing
    from apps.datasets.models import Example

    path = write_openai_jsonl(Path(tmp) / "rows.jsonl", N)
    project = bench_project("bench-import")
    started = time.perf_counter()
    report = importing.import_examples(project=project, path_or_file=path)
    seconds = time.perf_counter() - started
    assert report.ok and report.imported == N, (report.errors[:3], report.imported)
    assert Example.objects.filter(project=project).count() == N
    print(f"database={connection.vendor} rows={N} imported={report.imported} size={path.stat().st_size / 1e6:.1f}MB")
    again = time.perf_counter()
    dup = importing.import_examples(project=project, path_or_file=path)
    print(f"re-import: skipped_duplicates={dup.skipped_duplicates} in {time.perf_counter() - again:.1f}s")
    if connection.vendor != "sqlite":
        project.delete()
    print(f"seconds={seconds:.1f}")


if __name__ == "__main__":
    main()
