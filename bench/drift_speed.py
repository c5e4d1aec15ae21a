"""Drift pass speed: ``traffic.services.measure_drift`` (what the ``traffic.measure_drift`` task runs on a worker)
over ``--inputs`` stored inputs of the last weeks against a ``--version`` -example training version.

Synthetic support questions (order numbers, products, days drawn at random; a quarter of the stored inputs from a
new product line), in a fresh SQLite database (``DATABASE_URL`` to use another). Prints the time to build the data
(not measured) and the drift pass, with the weekly shares it found.

    .venv/bin/python bench/drift_speed.py [--inputs 100000] [--version 50000]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

ITEMS = ["running shoes", "hiking boots", "sandals", "winter boots", "trail shoes", "slippers", "loafers", "sneakers"]
NEW = ["rooftop solar kit", "balcony solar module", "home battery", "inverter", "charge controller"]


def order_question(rng) -> str:
    return (
        f"Where is my order of {rng.choice(ITEMS)} number {rng.randrange(1000, 99999)}? It was due on "
        f"{rng.choice(['Monday', 'Tuesday', 'Friday'])} and {rng.choice(['tracking shows nothing', 'nobody came'])}."
    )


def new_question(rng) -> str:
    return (
        f"How do I mount the {rng.choice(NEW)} on a {rng.choice(['flat', 'tiled', 'metal'])} roof with "
        f"{rng.randrange(2, 40)} brackets, and is self installation covered?"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=100_000)
    parser.add_argument("--version", type=int, default=50_000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ftstudio-drift-bench-"))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ftstudio.settings")
    os.environ.setdefault("DJANGO_DEBUG", "1")
    os.environ.setdefault("DATABASE_URL", f"sqlite:///{work / 'db.sqlite3'}")
    import django

    django.setup()
    from django.core.management import call_command
    from django.utils import timezone

    call_command("migrate", verbosity=0)
    from apps.accounts.models import Project
    from apps.api.models import StoredCompletion
    from apps.api.selectors import run_model_id
    from apps.datasets.models import DatasetVersion, DatasetVersionItem
    from apps.runs.models import BaseModel, Run, RunStatus
    from apps.traffic.services import measure_drift

    rng = random.Random(1)
    start = time.perf_counter()
    project = Project.objects.create(name="Bench", slug="bench")
    version = DatasetVersion.objects.create(project=project, number=1, content_hash="x", split_counts={})
    DatasetVersionItem.objects.bulk_create(
        [
            DatasetVersionItem(
                version=version,
                position=i,
                split="train",
                content_hash=str(i),
                messages=[{"role": "user", "content": order_question(rng)}, {"role": "assistant", "content": "Ok."}],
            )
            for i in range(args.version)
        ],
        batch_size=5000,
    )
    base = BaseModel.objects.create(name="bench-model", source_kind="local", source="/nowhere")
    run = Run.objects.create(project=project, dataset_version=version, base_model=base, status=RunStatus.SUCCEEDED)
    model, now = run_model_id(run), timezone.now()
    rows = []
    for i in range(args.inputs):
        question = new_question(rng) if i % 4 == 0 else order_question(rng)
        rows.append(
            StoredCompletion(
                public_id=f"chatcmpl-{i}",
                project=project,
                model=model,
                messages=[{"role": "user", "content": question}],
                choices=[],
                created=0,
            )
        )
    StoredCompletion.objects.bulk_create(rows, batch_size=5000)
    ids = list(StoredCompletion.objects.order_by("id").values_list("id", flat=True))
    for week in range(4):  # spread over the last four weeks
        part = ids[week * len(ids) // 4 : (week + 1) * len(ids) // 4]
        StoredCompletion.objects.filter(id__gte=part[0], id__lte=part[-1]).update(
            created_at=now - timedelta(days=7 * week + 1)
        )
    built = time.perf_counter() - start
    print(f"data: {args.version} training inputs, {args.inputs} stored inputs, built in {built:.1f} s")

    start = time.perf_counter()
    weeks = measure_drift(project=project, now=now)
    took = time.perf_counter() - start
    for w in weeks:
        print(f"week of {w.week}: {w.inputs} inputs, {w.share:.1%} with nothing close")
    print(f"drift pass: {took:.1f} s for {args.inputs} inputs against {args.version} training inputs")


if __name__ == "__main__":
    main()
