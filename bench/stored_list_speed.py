"""The stored-completions list with many rows: p50/p95 of ``GET /v1/chat/completions`` (the official SDK's call)
and of the traffic page, unfiltered and with each one filter, over ``--rows`` stored completions in one project.

Use PostgreSQL for the issue's figure (``DATABASE_URL=postgres://...``; the tables are created by ``migrate``);
without it a fresh SQLite file. Rows go in with ``COPY`` on PostgreSQL (bulk inserts elsewhere): 8 models,
a ``shop`` tag of 20 values, spread over 90 days. Each measured call runs ``--calls`` times.

    DATABASE_URL=postgres://... .venv/bin/python bench/stored_list_speed.py [--rows 1000000] [--calls 40]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--calls", type=int, default=40)
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ftstudio.settings")
    os.environ.setdefault("DJANGO_DEBUG", "1")
    os.environ.setdefault("DATABASE_URL", f"sqlite:///{tempfile.mkdtemp(prefix='ftstudio-list-bench-')}/db.sqlite3")
    import django

    django.setup()
    import logging

    from django.conf import settings

    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "testserver"]

    logging.disable(logging.WARNING)
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client
    from django.utils import timezone

    call_command("migrate", verbosity=0)
    from apps.accounts.models import Membership, Project, Role
    from apps.api.models import StoredCompletion
    from apps.api.services import create_api_key

    user = get_user_model().objects.create(username=f"bench{time.time_ns()}", is_staff=False)
    project = Project.objects.create(name="Bench", slug=f"bench-{time.time_ns()}")
    Membership.objects.create(project=project, user=user, role=Role.PM)
    key = create_api_key(project=project, user=user, name="bench")[1]
    now = timezone.now()
    start = time.perf_counter()
    table = StoredCompletion._meta.db_table
    columns = [
        "public_id", "project_id", "model", "messages", "choices", "usage", "metadata", "request", "created",
        "streamed", "stored_by", "created_at", "updated_at",
    ]  # fmt: skip
    choices = json.dumps([{"index": 0, "message": {"role": "assistant", "content": "It ships today."}}])

    def row(i: int):
        when = now - timedelta(seconds=i * 90 * 86400 // args.rows)
        messages = json.dumps([{"role": "user", "content": f"Where is order {i}?"}])
        meta = json.dumps({"shop": f"shop-{i % 20}", "n": str(i)})
        return (f"chatcmpl-b{project.pk}-{i}", project.pk, f"model-{i % 8}", messages, choices, None, meta, "{}",
                int(when.timestamp()), False, "request", when, when)  # fmt: skip

    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            with cursor.cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
                for i in range(args.rows):
                    copy.write_row(row(i))
            cursor.execute(f"ANALYZE {table}")
        else:
            sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(columns))})"
            for s in range(0, args.rows, 20000):
                cursor.executemany(sql, [row(i) for i in range(s, min(args.rows, s + 20000))])
    print(f"{connection.vendor}: {args.rows} rows written in {time.perf_counter() - start:.0f} s")

    api = Client(HTTP_AUTHORIZATION=f"Bearer {key}")
    page = Client()
    page.force_login(user)
    middle = f"chatcmpl-b{project.pk}-{args.rows // 2}"
    since = (now - timedelta(days=30)).date().isoformat()
    cases = [
        ("API, no filter", api, "/v1/chat/completions", {}),
        ("API, model", api, "/v1/chat/completions", {"model": "model-3"}),
        ("API, metadata", api, "/v1/chat/completions", {"metadata[shop]": "shop-7"}),
        ("API, after (middle)", api, "/v1/chat/completions", {"after": middle}),
        ("API, newest first", api, "/v1/chat/completions", {"order": "desc"}),
        ("page, no filter", page, f"/p/{project.slug}/traffic/", {}),
        ("page, model", page, f"/p/{project.slug}/traffic/", {"model": "model-3"}),
        ("page, tag", page, f"/p/{project.slug}/traffic/", {"meta_key": "shop", "meta_value": "shop-7"}),
        ("page, date", page, f"/p/{project.slug}/traffic/", {"since": since}),
    ]
    for name, client, url, query in cases:
        times = []
        for _ in range(args.calls):
            t = time.perf_counter()
            response = client.get(url, query)
            times.append((time.perf_counter() - t) * 1000)
            assert response.status_code == 200, (name, response.status_code)
        times.sort()
        p95 = times[min(len(times) - 1, int(0.95 * len(times)))]
        print(f"{name:22s} p50 {times[len(times) // 2]:7.1f} ms  p95 {p95:7.1f} ms")


if __name__ == "__main__":
    main()
