"""Latency of the labelling list with 100,000 examples in the project, over loopback HTTP.

Imports 100k generated examples (a third approved, splits assigned by a bulk update), starts gunicorn on
127.0.0.1 with production settings (DEBUG off), logs a designer in, and sends at least 200 GET requests (4 concurrent
clients) over a mix of
pages and filters. SQLite in a temp dir unless DATABASE_URL is set. Prints `p95_ms=X` last (budget: 300).
"""

import os
import random
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _curation import REPO, bench_project, setup_django, write_openai_jsonl  # noqa: E402

N = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
REQUESTS = 300
CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "4"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    os.environ["DJANGO_SECRET_KEY"] = (
        "bench-" + "x" * 50
    )  # the same key here and in the server: the session stays valid
    tmp = setup_django()
    from django.db import connection
    from django.test import Client

    from apps.accounts.models import Membership
    from apps.datasets import importing
    from apps.datasets.models import Example
    from tests.factories import UserFactory

    project = bench_project("bench-label")
    report = importing.import_examples(project=project, path_or_file=write_openai_jsonl(Path(tmp) / "rows.jsonl", N))
    assert report.ok and report.imported == N
    ids = list(Example.objects.filter(project=project).order_by("id").values_list("id", flat=True))
    Example.objects.filter(project=project, id__in=ids[::3]).update(status="approved")
    Example.objects.filter(project=project, id__in=ids[1::5]).update(split="train", tags=["refunds"])
    Example.objects.filter(project=project, id__in=ids[2::5]).update(split="test")
    user = UserFactory(username="bench-designer")
    Membership.objects.get_or_create(project=project, user=user, defaults={"role": "designer"})
    if connection.vendor == "postgresql":
        # what autovacuum does within a minute of a bulk load: statistics and the visibility map
        # (index-only scans for the counts)
        with connection.cursor() as cursor:
            cursor.execute(f"VACUUM ANALYZE {Example._meta.db_table}")
    client = Client()
    client.force_login(user)
    cookie = f"sessionid={client.cookies['sessionid'].value}"
    connection.close()

    port = free_port()
    # served as in production (docker-compose): DEBUG off, static files collected, no SSL redirect on loopback
    env = dict(
        os.environ,
        DJANGO_DEBUG="0",
        DJANGO_ALLOWED_HOSTS="127.0.0.1",
        DJANGO_SECURE_SSL_REDIRECT="0",
        DJANGO_SECURE_COOKIES="0",
    )
    subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "-v", "0"], cwd=REPO, env=env, check=True
    )
    server = subprocess.Popen(
        [
            str(REPO / ".venv" / "bin" / "gunicorn"),
            "ftstudio.wsgi",
            "-b",
            f"127.0.0.1:{port}",
            "-w",
            "2",
            "--log-level",
            "warning",
        ],
        cwd=REPO,
        env=env,
    )
    try:
        base = f"http://127.0.0.1:{port}/p/{project.slug}/data/"
        for _ in range(100):
            try:
                urllib.request.urlopen(base, timeout=2)
            except urllib.error.HTTPError:
                break
            except OSError:
                time.sleep(0.2)
        pages = N // 50
        rng = random.Random(0)
        queries = [
            "",
            "status=approved",
            "status=draft",
            "split=train",
            "split=test&status=approved",
            "tag=refunds",
            "split=none",
        ]
        urls = []
        for _ in range(REQUESTS):
            query = rng.choice(queries)
            urls.append(base + "?" + "&".join(p for p in (query, f"page={rng.randint(1, pages // 5)}") if p))

        def fetch(url: str) -> float:
            request = urllib.request.Request(url, headers={"Cookie": cookie})
            started = time.perf_counter()
            with urllib.request.urlopen(request, timeout=30) as response:
                body = response.read()
                assert response.status == 200 and b"Page " in body, (url, response.status, response.url, body[:300])
            return (time.perf_counter() - started) * 1000

        for url in urls[:10]:  # warm both workers
            fetch(url)
        with ThreadPoolExecutor(max_workers=CONCURRENCY) as pool:
            timings = sorted(pool.map(fetch, urls))
    finally:
        server.terminate()
        server.wait(timeout=10)
    p50, p95 = timings[len(timings) // 2], timings[int(len(timings) * 0.95) - 1]
    print(
        f"database={connection.vendor} examples={N} requests={len(timings)} concurrency={CONCURRENCY} "
        f"p50_ms={p50:.0f} max_ms={timings[-1]:.0f}"
    )
    if connection.vendor != "sqlite" and not os.environ.get("BENCH_KEEP"):
        project.delete()
    print(f"p95_ms={p95:.0f}")


if __name__ == "__main__":
    main()
